package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pelletier/go-toml/v2"

	"github.com/understudy/understudy/chunkstore"
	"github.com/understudy/understudy/snapshot/selection"
	usync "github.com/understudy/understudy/sync"
)

func pct(f float64) *float64 { return &f }

func TestConfigParses(t *testing.T) {
	for _, tc := range []struct {
		file string
		want Config
	}{{
		file: "product.toml", // the example of PRODUCT.md
		want: Config{
			Repo:        "/var/lib/understudy/repo",
			LogFile:     "/var/log/understudy/understudy.log",
			LogKeepDays: 14,
			Syslog:      true,
			Standbys: map[string]Standby{"dr": {
				Name:       "dr",
				URL:        "ssh://root@standby-bak/var/lib/understudy/repo",
				Target:     "/",
				KnownHosts: []string{"/root/.ssh/known_hosts"},
				Identity:   []string{"/root/.ssh/id_ed25519"},
			}},
			Checks: []Check{{
				Name:    "database disk group imported here (not failed over)",
				Command: []string{"/usr/sbin/vxdg", "list", "database"},
				Timeout: 30 * time.Second,
			}},
			Sets: map[string]Set{
				"accounts": {
					Name:  "accounts",
					Paths: []string{"/etc/passwd", "/etc/shadow", "/etc/group"},
					Every: Every{Interval: time.Hour},
					To:    []string{"dr"},
					Keep:  Keep{Hourly: 48, Daily: 14},
				},
				"os": {
					Name:          "os",
					Paths:         []string{"/", "/etc/init.d/", "/etc/rc0.d/", "/etc/ssh/", "/etc/passwd", "/etc/vfstab"},
					Exclude:       []string{"/etc/", "/dev/", "/devices/", "/proc/", "/var/adm/sa/"},
					OneFileSystem: true,
					Every:         Every{Interval: 24 * time.Hour},
					To:            []string{"dr"},
					Keep:          Keep{Daily: 30, Weekly: 8},
				},
			},
		},
	}, {
		file: "seed.toml", // the seed's script: accounts hourly, the OS daily
		want: Config{
			Repo:        "/failover/repo",
			LogFile:     "/failover/logs/understudy.log",
			LogKeepDays: 31,
			Syslog:      true,
			Standbys: map[string]Standby{"standby_bak": {
				Name:           "standby_bak",
				URL:            "ssh://root@standby_bak:22/failover/repo",
				Target:         "/",
				Identity:       []string{"/root/.ssh/id_ed25519", "/root/.ssh/id_rsa"},
				Apply:          true,
				RemoteCommand:  "/usr/local/bin/understudy",
				ConnectTimeout: 20 * time.Second,
				Keepalive:      30 * time.Second,
			}},
			Checks: []Check{{
				Name:    "vx diskgroup database imported here (not failed over)",
				Command: []string{"/usr/sbin/vxdg", "list", "database"},
				Timeout: 30 * time.Second,
			}, {
				Name:    "standby answers ping",
				Command: []string{"/usr/sbin/ping", "standby_bak", "2"},
				Timeout: time.Minute,
			}, {
				Name:    "/usr/symcli/bin/symrdf -g database -synchronized verify",
				Command: []string{"/usr/symcli/bin/symrdf", "-g", "database", "-synchronized", "verify"},
				Timeout: 2 * time.Minute,
			}},
			Sets: map[string]Set{
				"accounts": {
					Name:  "accounts",
					Paths: []string{"/etc/passwd", "/etc/shadow", "/etc/group"},
					Every: Every{Interval: time.Hour},
					To:    []string{"standby_bak"},
					Keep:  Keep{Last: 3, Hourly: 48, Daily: 14},
				},
				"os": {
					Name: "os",
					Paths: []string{"/",
						"/etc/init.d/", "/etc/rc0.d/", "/etc/rc2.d/", "/etc/rc3.d/", "/etc/rcS.d/",
						"/etc/lp/", "/etc/inet/", "/etc/net/", "/etc/opt/", "/etc/ssh/",
						"/etc/profile", "/etc/passwd", "/etc/shadow", "/etc/group",
						"/etc/resolv.conf", "/etc/printers.conf", "/etc/vfstab", "/etc/system"},
					Exclude: []string{"/etc/", "/kernel/drv/sd.conf", "/dev/", "/devices/", "/proc/", "/var/adm/sa/",
						"/usr/emc/API/symapi/db", "/usr/emc/API/symapi/log"},
					OneFileSystem: true,
					TrustMtime:    true,
					Every:         Every{Cron: "30 2 * * *"},
					To:            []string{"standby_bak"},
					Keep:          Keep{Daily: 30, Weekly: 8, Monthly: 12, Within: 48 * time.Hour},
					ApplyDelay:    24 * time.Hour,
					Guard:         Guard{MaxDeleted: pct(10), MaxChanged: pct(40.5)},
					Protect:       []string{"/etc/hostname.*", "/etc/path_to_inst", "/etc/vfstab"},
				},
			},
		},
	}} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", "config", tc.file)
			got, err := loadConfig(path)
			if err != nil {
				t.Fatal(err)
			}
			tc.want.File = path
			if !reflect.DeepEqual(*got, tc.want) {
				t.Errorf("got\n%+v\nwant\n%+v", *got, tc.want)
			}
			for name, s := range got.Sets {
				if sel, err := s.Selection(); err != nil || sel == nil {
					t.Errorf("set %s: selection %v, %v", name, sel, err)
				}
			}
			if err := checkConfig(got); err != nil {
				t.Error(err)
			}
		})
	}
}

// TestConfigProblems checks that every problem of a file is reported, each
// with its line and full key.
func TestConfigProblems(t *testing.T) {
	for _, tc := range []struct {
		file string
		want []string // "LINE KEY: part of the message"
	}{{
		file: "unknown_keys.toml", // at every level
		want: []string{
			"2 log_fil: unknown key (did you mean log_file?)",
			"3 colour: unknown key (known here: check, log_file,",
			"7 standby.dr.know_hosts: unknown key (did you mean known_hosts?)",
			"12 check[0].timout: unknown key (did you mean timeout?)",
			"16 set.os.exlude: unknown key (did you mean exclude?)",
			"17 set.os.keep.dayly: unknown key (did you mean daily?)",
			"18 set.os.guard.max_delted: unknown key (did you mean max_deleted?)",
			"19 set.os.one-file-system: unknown key (did you mean one_file_system?)",
			"21 sets: unknown key (did you mean set?)",
			"24 set.os.schedule: unknown key (known here: apply_delay, every,",
		},
	}, {
		file: "bad_values.toml", // all at once, in the order of the file
		want: []string{
			`1 repo: "var/lib/understudy/repo": want an absolute path`,
			`2 log_keep_days: -1: want 0 or more`,
			`3 log_rotate: "weekly": want "daily" or "size:SIZE"`,
			`4 syslog: want true or false, not a string ("yes")`,
			`7 standby.dr.url: ssh URL "ssh://root@-bad/repo": host begins with -`,
			`8 standby.dr.apply: apply = true needs target`,
			`9 standby.dr.connect_timeout: "10 s" is not a duration`,
			`11 standby.Backup: standby name "Backup": use lowercase letters, digits, _ and -`,
			`12 standby.Backup.url: "relative/repo": want an absolute repository path or ssh://`,
			`16 check[0].command: missing: the program and its arguments`,
			`17 check[0].timeout: "1x" is not a duration`,
			`22 set.os.paths[1]: path "etc/ssh/": not absolute`,
			`24 set.os.exclude[1]: exclude pattern "[a-": unterminated character class`,
			`25 set.os.every: "25x" is not a duration or a cron expression`,
			`26 set.os.to[1]: no standby "dx" (did you mean dr?)`,
			`27 set.os.keep.daily: want a whole number, not a string ("30")`,
			`28 set.os.apply_delay: "7days" is not a duration`,
			`29 set.os.guard.max_deleted: 120: want a percentage from 0 to 100`,
			`30 set.os.protect[0]: exclude pattern "+ /etc/hostname": "+ " makes an include rule`,
			`34 set.accounts.every: "0 25 * * *" is not a cron expression: end of range (25) above maximum (23)`,
			`38 set.fast.every: "30s" is shorter than the shortest interval, 1m`,
			`41 set.nopaths.every: the set has a schedule but no paths to take`,
		},
	}, {
		file: "syntax.toml", // reading stops at a syntax error
		want: []string{"5 : expected ',' or ']' after array value"},
	}} {
		t.Run(tc.file, func(t *testing.T) {
			path := filepath.Join("testdata", "config", tc.file)
			_, err := loadConfig(path)
			var ce *configError
			if !errors.As(err, &ce) {
				t.Fatalf("want a configError, got %v", err)
			}
			if ce.File != path {
				t.Errorf("file %q, want %q", ce.File, path)
			}
			for i := range max(len(ce.Problems), len(tc.want)) {
				var got, want string
				if i < len(ce.Problems) {
					p := ce.Problems[i]
					got = fmt.Sprintf("%d %s: %s", p.Line, p.Key, p.Msg)
				}
				if i < len(tc.want) {
					want = tc.want[i]
				}
				if want == "" || !strings.HasPrefix(got, want) {
					t.Errorf("problem %d:\n got %s\nwant %s", i, got, want)
				}
			}
		})
	}
}

func TestConfigErrorFormat(t *testing.T) {
	_, err := loadConfig("testdata/config/syntax.toml")
	if got, want := err.Error(), "testdata/config/syntax.toml:5: expected ',' or ']' after array value"; got != want {
		t.Errorf("one problem: %q, want %q", got, want)
	}
	_, err = loadConfig("testdata/config/unknown_keys.toml")
	lines := strings.Split(err.Error(), "\n")
	if lines[0] != "configuration testdata/config/unknown_keys.toml has 10 problems:" || len(lines) != 11 ||
		lines[5] != "  testdata/config/unknown_keys.toml:16: set.os.exlude: unknown key (did you mean exclude?)" {
		t.Errorf("several problems:\n%s", err)
	}
	if _, err := loadConfig("testdata/config/no-such.toml"); err == nil || err.Error() != "configuration file testdata/config/no-such.toml does not exist" {
		t.Errorf("missing file: %v", err)
	}
}

func TestConfigKeyLines(t *testing.T) {
	doc := `a = 1
[[check]]
name = "x"
[[check]]
name = "y"
[check.sub]
k = [
  "e0",
  # a comment
  { z = 1 },
]
["set"."my os"]
paths.deep = 2
`
	want := map[string]int{
		"a": 1, "check": 2, "check[0]": 2, "check[0].name": 3, "check[1]": 4, "check[1].name": 5,
		"check[1].sub": 6, "check[1].sub.k": 7, "check[1].sub.k[0]": 8, "check[1].sub.k[1]": 10,
		"check[1].sub.k[1].z": 10, "set": 12, `set."my os"`: 12, `set."my os".paths`: 13, `set."my os".paths.deep`: 13,
	}
	if got := keyLines([]byte(doc)); !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

func TestConfigValueSyntax(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration // -1: an error
	}{
		{"30s", 30 * time.Second}, {"4h", 4 * time.Hour}, {"1h30m", 90 * time.Minute}, {"0", 0},
		{"1d", 24 * time.Hour}, {"7d", 7 * 24 * time.Hour}, {"1d12h", 36 * time.Hour},
		{"", -1}, {"d", -1}, {"1.5d", -1}, {"-1h", -1}, {"-1d", -1}, {"1dd", -1}, {"25x", -1}, {"7days", -1}, {"123456d", -1},
	} {
		got, err := parseDuration(tc.in)
		if err != nil {
			got = -1
		}
		if got != tc.want {
			t.Errorf("parseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
	for _, tc := range []struct {
		in   string
		want Every
		err  string
	}{
		{in: "1h", want: Every{Interval: time.Hour}},
		{in: "1m", want: Every{Interval: time.Minute}},
		{in: "2d", want: Every{Interval: 48 * time.Hour}},
		{in: "0 3 * * *", want: Every{Cron: "0 3 * * *"}},
		{in: "*/15 8-18 * * mon-fri", want: Every{Cron: "*/15 8-18 * * mon-fri"}},
		{in: "@daily", want: Every{Cron: "@daily"}},
		{in: "CRON_TZ=UTC 30 2 * * *", want: Every{Cron: "CRON_TZ=UTC 30 2 * * *"}},
		{in: "59s", err: "shorter than the shortest interval"},
		{in: "0", err: "shorter"},
		{in: "25x", err: `"25x" is not a duration or a cron expression`},
		{in: "0 3 * *", err: "expected exactly 5 fields"},
		{in: "0 3 * * * *", err: "expected exactly 5 fields"},
		{in: "61 * * * *", err: "above maximum"},
		{in: "@every 5m", err: `write the interval itself, such as every = "5m"`},
		{in: "@sometimes", err: "unrecognized descriptor"},
		{in: "0 0 31 4 *", err: `"0 0 31 4 *" never comes`},
		{in: "0 0 29 2 *", want: Every{Cron: "0 0 29 2 *"}},
	} {
		got, err := parseEvery(tc.in)
		switch {
		case tc.err == "" && (err != nil || got != tc.want):
			t.Errorf("parseEvery(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("parseEvery(%q): error %v, want one with %q", tc.in, err, tc.err)
		}
	}
	last := time.Date(2025, 3, 1, 10, 0, 0, 0, time.UTC)
	if got := (Every{Interval: time.Hour}).Next(last); !got.Equal(last.Add(time.Hour)) {
		t.Errorf("interval Next: %v", got)
	}
	if got := (Every{Cron: "CRON_TZ=UTC 30 2 * * *"}).Next(last); !got.Equal(time.Date(2025, 3, 2, 2, 30, 0, 0, time.UTC)) {
		t.Errorf("cron Next: %v", got)
	}
	// 7 is Sunday, as in Vixie cron and in systemd-units' timers.
	if e, err := parseEvery("CRON_TZ=UTC 0 4 * * 7"); err != nil {
		t.Errorf("day 7: %v", err)
	} else if got := e.Next(last); !got.Equal(time.Date(2025, 3, 2, 4, 0, 0, 0, time.UTC)) {
		t.Errorf("day 7 Next: %v, want Sunday 2025-03-02 04:00", got)
	}
	for _, tc := range []struct {
		in   string
		want int64 // -1: an error
	}{
		{"daily", 0}, {"size:64MiB", 64 << 20}, {"size:1GiB", 1 << 30}, {"size:500KB", 500_000}, {"size:4096", 4096},
		{"size:", -1}, {"size:1TiB", -1}, {"size:10", -1}, {"size:1.5MiB", -1}, {"weekly", -1}, {"size:9999999999GiB", -1},
		{"size:+5MiB", -1}, {"size:MiB", -1},
	} {
		var r LogRotate
		got := int64(-1)
		if err := r.parse(tc.in); err == nil {
			got = r.MaxSize
			var again LogRotate
			if err := again.parse(r.String()); err != nil || again != r {
				t.Errorf("log_rotate %q: String %q reads as %+v, %v", tc.in, r.String(), again, err)
			}
		}
		if got != tc.want {
			t.Errorf("log_rotate %q: MaxSize %d, want %d", tc.in, got, tc.want)
		}
	}
}

func TestConfigSuggest(t *testing.T) {
	known := []string{"apply_delay", "every", "exclude", "keep", "one_file_system", "paths", "to"}
	for in, want := range map[string]string{
		"exlude": "exclude", "excludes": "exclude", "Paths": "paths", "one-file-system": "one_file_system",
		"evry": "every", "apply_dealy": "apply_delay", "schedule": "", "x": "", "kep": "keep", "tx": "to", "ex": "",
	} {
		if got := suggest(in, known); got != want {
			t.Errorf("suggest(%q) = %q, want %q", in, got, want)
		}
	}
}

// TestConfigSource checks which file -c and the default path name, and
// that a configuration is read only once.
func TestConfigSource(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.toml")
	if err := os.WriteFile(good, []byte("repo = \"/r\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing.toml")
	for _, tc := range []struct {
		name    string
		src     configSource
		repo    string
		errCode int
	}{
		{name: "no default file", src: configSource{defaultPath: missing}},
		{name: "default file", src: configSource{defaultPath: good}, repo: "/r"},
		{name: "-c file", src: configSource{path: good, explicit: true, defaultPath: missing}, repo: "/r"},
		{name: "-c missing file", src: configSource{path: missing, explicit: true, defaultPath: good}, errCode: exitUsage},
		{name: `-c ""`, src: configSource{explicit: true, defaultPath: good}},
		{name: "bad file", src: configSource{path: "testdata/config/bad_values.toml", explicit: true}, errCode: exitUsage},
	} {
		t.Run(tc.name, func(t *testing.T) {
			g := &globals{conf: tc.src}
			err := g.repoFromConfig()
			if got := exitCode(err); got != tc.errCode || g.repo != tc.repo {
				t.Errorf("repo %q, error %v (exit %d); want %q, exit %d", g.repo, err, got, tc.repo, tc.errCode)
			}
			cfg1, err1 := g.config()
			cfg2, err2 := g.config()
			if cfg1 != cfg2 || err1 != err2 {
				t.Errorf("read twice: %p, %v then %p, %v", cfg1, err1, cfg2, err2)
			}
		})
	}
	g := &globals{repo: "/given", conf: configSource{path: "testdata/config/bad_values.toml", explicit: true}}
	if err := g.repoFromConfig(); err != nil || g.repo != "/given" || g.conf.loaded {
		t.Errorf("with --repo the configuration is not read: %v, %q, loaded %v", err, g.repo, g.conf.loaded)
	}
}

// configTree writes a small OS tree shaped like the seed's under a new
// directory and returns it, with the byte sizes of its files by path.
func configTree(t *testing.T) (string, map[string]int64) {
	t.Helper()
	root := t.TempDir()
	files := map[string]string{
		"etc/passwd":          "root:x:0:0:root:/root:/bin/sh\n",
		"etc/shadow":          "root:*:19000:0:99999:7:::\n",
		"etc/hosts":           "127.0.0.1 localhost\n",
		"etc/ssh/sshd_config": "PermitRootLogin prohibit-password\n",
		"dev/console":         "",
		"proc/1/status":       "Name: init\n",
		"usr/bin/tool":        "#!/bin/sh\necho tool\n",
		"var/adm/sa/sa01":     "sar data",
	}
	writeFiles(t, root, files)
	if err := os.Mkdir(filepath.Join(root, "usr/lib"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../bin/tool", filepath.Join(root, "usr/lib/link")); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mkfifo(filepath.Join(root, "var/fifo"), 0o600); err != nil {
		t.Fatal(err)
	}
	sizes := make(map[string]int64)
	for p, c := range files {
		sizes["/"+p] = int64(len(c))
	}
	return root, sizes
}

func TestConfigCheckCommand(t *testing.T) {
	root, size := configTree(t)
	cfg := "testdata/config/check.toml"
	osBytes := size["/etc/passwd"] + size["/etc/ssh/sshd_config"] + size["/usr/bin/tool"]

	r := run(t, nil, "-c", cfg, "config", "check", "--root", root)
	want := fmt.Sprintf(`configuration %s is valid: 3 sets, 0 standbys, 0 checks
set accounts: 2 files, 1 directory, 0 others, %d B
set os: 3 files, 7 directories, 2 others, %d B
set standby: no paths (settings for the standby side only)
`, cfg, size["/etc/passwd"]+size["/etc/shadow"], osBytes)
	if r.code != 0 || r.stdout != want {
		t.Errorf("exit %d\n%s\nwant\n%s\nstderr: %s", r.code, r.stdout, want, r.stderr)
	}
	if r.stderr != "warning: set accounts: /etc/group: listed path does not exist\n" {
		t.Errorf("stderr: %q", r.stderr)
	}

	wantList := "/etc\n/etc/passwd\n/etc/ssh\n/etc/ssh/sshd_config\n/usr\n/usr/bin\n/usr/bin/tool\n/usr/lib\n/usr/lib/link\n/var\n/var/adm\n/var/fifo\n"
	if out := runOK(t, "-c", cfg, "config", "check", "--root", root, "--list", "os"); out != wantList {
		t.Errorf("--list os:\n%s\nwant\n%s", out, wantList)
	}

	var rep struct {
		Valid bool           `json:"valid"`
		Sets  []setSelection `json:"sets"`
	}
	decodeJSON(t, runOK(t, "-c", cfg, "--json", "config", "check", "--root", root, "os", "accounts"), &rep)
	wantSets := []setSelection{
		{Set: "os", Files: 3, Dirs: 7, Others: 2, Bytes: osBytes},
		{Set: "accounts", Files: 2, Dirs: 1, Bytes: size["/etc/passwd"] + size["/etc/shadow"],
			Warnings: []string{"/etc/group: listed path does not exist"}},
	}
	if !rep.Valid || !reflect.DeepEqual(rep.Sets, wantSets) {
		t.Errorf("--json: %+v\nwant %+v", rep, wantSets)
	}

	// The repository is never counted, as snapshot never takes it.
	repo := filepath.Join(root, "var", "repo")
	runOK(t, "-r", repo, "init")
	decodeJSON(t, runOK(t, "-c", cfg, "-r", repo, "--json", "config", "check", "--root", root, "os"), &rep)
	if !reflect.DeepEqual(rep.Sets, wantSets[:1]) {
		t.Errorf("with the repository in the tree: %+v", rep.Sets)
	}

	if r := run(t, nil, "-c", cfg, "config", "check", "nosuch"); r.code != exitUsage || !strings.Contains(r.stderr, `no set "nosuch"`) {
		t.Errorf("unknown set: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, nil, "-c", cfg, "config", "chek"); r.code != exitUsage {
		t.Errorf("config chek: exit %d, %s", r.code, r.stderr)
	}
}

// TestConfigCheckMatchesSnapshot checks config check's counts against the
// statistics of snapshots of the same selections.
func TestConfigCheckMatchesSnapshot(t *testing.T) {
	root, _ := configTree(t)
	repo := filepath.Join(t.TempDir(), "repo")
	runOK(t, "-r", repo, "init")
	for set, args := range map[string][]string{
		"os": {"--one-file-system", "--exclude", "/etc/", "--exclude", "/dev/", "--exclude", "/proc/", "--exclude", "/var/adm/sa/",
			"/", "/etc/ssh/", "/etc/passwd"},
		"accounts": {"/etc/passwd", "/etc/shadow", "/etc/group"}, // exit 3: no /etc/group
	} {
		var snap struct {
			Stats struct {
				Files      int64 `json:"files"`
				Dirs       int64 `json:"dirs"`
				Others     int64 `json:"others"`
				BytesTotal int64 `json:"bytes_total"`
			} `json:"stats"`
		}
		r := run(t, nil, append([]string{"-r", repo, "--json", "snapshot", "--set", set, "--root", root}, args...)...)
		if r.code != 0 && r.code != exitPartial {
			t.Fatalf("snapshot %s: exit %d, %s", set, r.code, r.stderr)
		}
		decodeJSON(t, r.stdout, &snap)
		var rep struct{ Sets []setSelection }
		decodeJSON(t, runOK(t, "-c", "testdata/config/check.toml", "--json", "config", "check", "--root", root, set), &rep)
		got, st := rep.Sets[0], snap.Stats
		if got.Files != st.Files || got.Dirs != st.Dirs || got.Others != st.Others || got.Bytes != st.BytesTotal {
			t.Errorf("set %s: config check %+v, snapshot %+v", set, got, st)
		}
	}
}

func TestConfigBadFileExit2(t *testing.T) {
	bad := "testdata/config/bad_values.toml"
	r := run(t, nil, "-c", bad, "config", "check")
	if r.code != exitUsage || r.stdout != "" ||
		!strings.Contains(r.stderr, bad+":25: set.os.every: \"25x\" is not a duration or a cron expression\n") ||
		!strings.HasSuffix(r.stderr, "understudy: configuration "+bad+" is not valid: 22 problems\n") {
		t.Errorf("exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	var rep struct {
		Valid    bool            `json:"valid"`
		Problems []configProblem `json:"problems"`
	}
	r = run(t, nil, "-c", bad, "--json", "config", "check")
	decodeJSON(t, r.stdout, &rep)
	if r.code != exitUsage || rep.Valid || len(rep.Problems) != 22 ||
		rep.Problems[13] != (configProblem{Line: 25, Key: "set.os.every", Msg: `"25x" is not a duration or a cron expression`}) {
		t.Errorf("--json: exit %d, %+v", r.code, rep)
	}

	if r := run(t, nil, "-c", "testdata/config/no-such.toml", "config", "check"); r.code != exitUsage ||
		r.stderr != "understudy: configuration file testdata/config/no-such.toml does not exist\n" {
		t.Errorf("missing -c file: exit %d, %q", r.code, r.stderr)
	}
}

// TestConfigRepo checks that a command takes the repository from the
// configuration unless --repo or UNDERSTUDY_REPO gives one, and reads the
// configuration only then.
func TestConfigRepo(t *testing.T) {
	dir := t.TempDir()
	repo := filepath.Join(dir, "repo")
	runOK(t, "-r", repo, "init")
	cfg := filepath.Join(dir, "understudy.toml")
	if err := os.WriteFile(cfg, []byte("repo = "+strconv.Quote(repo)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := runOK(t, "-c", cfg, "--json", "snapshots"); strings.TrimSpace(out) != "[]" {
		t.Errorf("snapshots of the configuration's repo: %q", out)
	}
	bad := "testdata/config/bad_values.toml"
	if r := run(t, nil, "-c", bad, "-r", repo, "snapshots"); r.code != 0 {
		t.Errorf("--repo given, bad configuration not read: exit %d, %s", r.code, r.stderr)
	}
	r := run(t, nil, "-c", bad, "snapshots")
	if r.code != exitUsage || !strings.Contains(r.stderr, "understudy: configuration "+bad+" has 22 problems:\n") ||
		!strings.Contains(r.stderr, "\n  "+bad+":26: set.os.to[1]: no standby \"dx\" (did you mean dr?)\n") {
		t.Errorf("bad configuration: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, nil, "-c", "", "snapshots"); r.code != exitUsage || !strings.Contains(r.stderr, "no repository") {
		t.Errorf(`-c "": exit %d, %s`, r.code, r.stderr)
	}
}

// FuzzParseConfig feeds parseConfig any bytes. It must not panic; it must
// give the same answer twice; what it accepts must hold every promise of
// the Config doc comment (checkConfig); and what it refuses comes as a
// configError whose problems each name a line of the document, 0 only for
// a syntax error the TOML parser could not place.
func FuzzParseConfig(f *testing.F) {
	seeds, err := filepath.Glob("testdata/config/*.toml")
	if err != nil || len(seeds) == 0 {
		f.Fatalf("no seeds in testdata/config: %v", err)
	}
	for _, p := range seeds {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		const file = "fuzz.toml"
		cfg, err := parseConfig(file, data)
		cfg2, err2 := parseConfig(file, data)
		if !reflect.DeepEqual(cfg, cfg2) || fmt.Sprint(err) != fmt.Sprint(err2) {
			t.Fatalf("two readings differ:\n%+v, %v\n%+v, %v", cfg, err, cfg2, err2)
		}
		if err == nil {
			if cfg == nil || cfg.File != file {
				t.Fatalf("accepted without a configuration: %+v", cfg)
			}
			if err := checkConfig(cfg); err != nil {
				t.Fatalf("accepted %q:\n%v", data, err)
			}
			return
		}
		var ce *configError
		if cfg != nil || !errors.As(err, &ce) || ce.File != file || len(ce.Problems) == 0 {
			t.Fatalf("refused with %+v, %T %v", cfg, err, err)
		}
		_ = ce.Error()
		syntax := toml.Unmarshal(data, new(map[string]any)) != nil
		lines := bytes.Count(data, []byte("\n")) + 1
		for i, p := range ce.Problems {
			switch {
			case p.Line < 0 || p.Line > lines:
				t.Errorf("problem %+v: line %d of a document of %d lines", p, p.Line, lines)
			case p.Line == 0 && !syntax:
				t.Errorf("problem %+v of a document that parsed names no line", p)
			case i > 0 && p.Line < ce.Problems[i-1].Line:
				t.Errorf("problems out of order: %+v after %+v", p, ce.Problems[i-1])
			case p.Msg == "":
				t.Errorf("problem %+v says nothing", p)
			}
		}
		if t.Failed() {
			t.Logf("document %q", data)
		}
	})
}

// checkConfig returns what in c breaks a promise of the Config doc
// comment: paths absolute, patterns compiling, URLs parsing, every set's To
// naming a standby, every Every parsing as written, a sane LogRotate.
func checkConfig(c *Config) error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	abs := func(key, p string) {
		if !strings.HasPrefix(p, "/") {
			bad("%s %q: not absolute", key, p)
		}
	}
	if c.Repo != "" {
		abs("repo", c.Repo)
	}
	if c.LogFile != "" {
		abs("log_file", c.LogFile)
	}
	if c.LogKeepDays < 0 {
		bad("log_keep_days %d", c.LogKeepDays)
	}
	var rot LogRotate
	if err := rot.parse(c.LogRotate.String()); err != nil || rot != c.LogRotate || rot.MaxSize != 0 && rot.MaxSize < 1<<10 {
		bad("log_rotate %+v: written %q, read back %+v, %v", c.LogRotate, c.LogRotate.String(), rot, err)
	}
	for name, s := range c.Standbys {
		key := "standby." + name
		if s.Name != name || !validName(name) {
			bad("%s: name %q", key, s.Name)
		}
		if _, err := usync.ParseDest(s.URL); err != nil || !strings.HasPrefix(s.URL, "/") && !strings.HasPrefix(s.URL, "ssh://") {
			bad("%s.url %q: %v", key, s.URL, err)
		}
		if s.Target != "" || s.Apply {
			abs(key+".target", s.Target)
		}
		for _, p := range slices.Concat(s.KnownHosts, s.Identity) {
			abs(key+" key file", p)
		}
		if s.ConnectTimeout < 0 || s.Keepalive < 0 {
			bad("%s: negative timeout", key)
		}
	}
	names := map[string]bool{}
	for i, ch := range c.Checks {
		if len(ch.Command) == 0 || ch.Command[0] == "" || ch.Timeout <= 0 || ch.Name == "" || names[ch.Name] {
			bad("check[%d]: %+v", i, ch)
		}
		names[ch.Name] = true
	}
	for name, s := range c.Sets {
		key := "set." + name
		if s.Name != name || !validName(name) {
			bad("%s: name %q", key, s.Name)
		}
		for _, p := range s.Paths {
			abs(key+".paths", p)
		}
		if sel, err := s.Selection(); err != nil || (sel == nil) != (len(s.Paths) == 0) {
			bad("%s: selection %v, %v", key, sel, err)
		}
		for _, pats := range [][]string{s.Exclude, s.Protect} {
			if _, err := selection.New([]string{"/"}, pats, false); err != nil {
				bad("%s: patterns %q: %v", key, pats, err)
			}
		}
		if !s.Every.IsZero() {
			e, err := parseEvery(s.Every.String())
			if err != nil || e != s.Every || s.Every.Cron == "" && s.Every.Interval < minEvery || len(s.Paths) == 0 {
				bad("%s.every %+v: read back %+v, %v (paths %q)", key, s.Every, e, err, s.Paths)
			}
			if last := time.Date(2030, 1, 1, 0, 0, 0, 0, time.UTC); !s.Every.Next(last).After(last) {
				bad("%s.every %q: never comes after %v", key, s.Every, last)
			}
		}
		for _, to := range s.To {
			if _, ok := c.Standbys[to]; !ok {
				bad("%s.to: no standby %q", key, to)
			}
		}
		k := s.Keep
		if min(k.Last, k.Hourly, k.Daily, k.Weekly, k.Monthly, k.Yearly) < 0 || k.Within < 0 || s.ApplyDelay < 0 {
			bad("%s: negative keep or apply_delay: %+v, %v", key, k, s.ApplyDelay)
		}
		for _, p := range []*float64{s.Guard.MaxDeleted, s.Guard.MaxChanged} {
			if p != nil && !(*p >= 0 && *p <= 100) {
				bad("%s.guard: %g", key, *p)
			}
		}
	}
	return errors.Join(errs...)
}

// TestConfigStandbySettings: the configuration file's apply_delay, guard
// and protect of a set are written into its standby state before apply
// decisions and shown by standby and protect list; taking them out of the
// file takes them out of the state, leaving protect add's patterns; the
// standby command refuses to change what the file holds.
func TestConfigStandbySettings(t *testing.T) {
	base := t.TempDir()
	repo, root, target := filepath.Join(base, "repo"), filepath.Join(base, "root"), filepath.Join(base, "target")
	cfg := filepath.Join(base, "understudy.toml")
	config := func(doc string) {
		t.Helper()
		if err := os.WriteFile(cfg, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	state := func() (st struct {
		ApplyDelay    string   `json:"apply_delay"`
		MaxDeleted    *float64 `json:"max_deleted"`
		MaxChanged    *float64 `json:"max_changed"`
		Protect       []string `json:"protect"`
		ConfigProtect []string `json:"config_protect"`
	}) {
		t.Helper()
		decodeJSON(t, runOK(t, "-c", cfg, "-r", repo, "--json", "standby", "--set", "os"), &st)
		return st
	}
	files := map[string]string{"etc/hostname": "primary\n", "etc/machine-id": "primary-id\n",
		"etc/passwd": "root:x:0:0:root:/root:/bin/sh\n", "etc/group": "root:x:0:\n", "etc/shadow": "root:*:19000:0:99999:7:::\n"}
	for i := range 10 {
		files[fmt.Sprintf("srv/f%d", i)] = fmt.Sprintf("file %d\n", i)
	}
	writeFiles(t, root, files)
	// The standby's own files differ in size from the primary's: written in
	// the same clock tick, a file of the same size would look unchanged.
	writeFiles(t, target, map[string]string{"etc/hostname": "the-standby\n", "etc/machine-id": "the-standby-id\n"})
	runOK(t, "-r", repo, "init")
	runOK(t, "-r", repo, "snapshot", "--set", "os", "--root", root, "/srv", "/etc")
	pending := []string{"-c", cfg, "-r", repo, "apply", "--pending", "--set", "os", "--target", target}

	// The file's delay makes the automatic apply wait.
	config("[set.os]\napply_delay = \"4h\"\nguard = { max_deleted = 10 }\nprotect = [\"/etc/hostname\"]\n")
	r := run(t, nil, pending...)
	if r.code != 0 || !strings.Contains(r.stdout, "nothing due: snapshot ") ||
		!strings.Contains(r.stderr, "understudy: set os: from "+cfg+": apply delay none -> 4h, max deleted 20% -> 10%, protect (configuration) none -> /etc/hostname\n") {
		t.Fatalf("apply --pending with apply_delay 4h: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	if _, err := os.Stat(filepath.Join(target, "srv")); !os.IsNotExist(err) {
		t.Fatalf("a waiting apply wrote the target: %v", err)
	}
	if st := state(); st.ApplyDelay != "4h" || st.MaxDeleted == nil || *st.MaxDeleted != 10 || st.MaxChanged != nil ||
		len(st.Protect) != 0 || !slices.Equal(st.ConfigProtect, []string{"/etc/hostname"}) {
		t.Errorf("state: %+v", st)
	}
	// Once written, nothing more to write.
	if r := run(t, nil, pending...); r.code != 0 || r.stderr != "" {
		t.Errorf("apply --pending again: exit %d, stderr %q", r.code, r.stderr)
	}

	// What the file holds, the standby command does not change; protect
	// add adds beside the file's patterns, remove takes only its own.
	r = run(t, nil, "-c", cfg, "-r", repo, "standby", "--set", "os", "--apply-delay", "1h")
	if r.code != exitUsage || !strings.Contains(r.stderr, "set os is in the configuration file "+cfg) {
		t.Errorf("standby --apply-delay for a configured set: exit %d, %s", r.code, r.stderr)
	}
	if r := run(t, nil, "-c", cfg, "-r", repo, "standby", "--set", "os", "--max-changed", "30"); r.code != exitUsage {
		t.Errorf("standby --max-changed for a configured set: exit %d, %s", r.code, r.stderr)
	}
	runOK(t, "-c", cfg, "-r", repo, "protect", "add", "--set", "os", "/etc/machine-id")
	if out := runOK(t, "-c", cfg, "-r", repo, "protect", "list", "--set", "os"); out != "/etc/machine-id\n/etc/hostname (configuration)\n" {
		t.Errorf("protect list:\n%s", out)
	}
	var list []protectedPattern
	decodeJSON(t, runOK(t, "-c", cfg, "-r", repo, "--json", "protect", "list", "--set", "os"), &list)
	if want := []protectedPattern{{Pattern: "/etc/machine-id"}, {Pattern: "/etc/hostname", Config: true}}; !slices.Equal(list, want) {
		t.Errorf("protect list --json: %+v, want %+v", list, want)
	}
	want := fmt.Sprintf("set os (apply delay, limits and marked patterns from %s)\n  apply delay  4h\n  max deleted  10%%\n"+
		"  max changed  50%% (default)\n  protect      /etc/machine-id /etc/hostname (configuration)\n", cfg)
	if out := runOK(t, "-c", cfg, "-r", repo, "standby", "--set", "os"); out != want {
		t.Errorf("standby:\n%s\nwant\n%s", out, want)
	}
	r = run(t, nil, "-c", cfg, "-r", repo, "protect", "remove", "--set", "os", "/etc/hostname")
	if r.code != exitUsage || !strings.Contains(r.stderr, "comes from the configuration file") {
		t.Errorf("protect remove of the file's pattern: exit %d, %s", r.code, r.stderr)
	}

	// Without the delay in the file, the snapshot is due; the file's
	// pattern and protect add's keep both files.
	config("[set.os]\nguard = { max_deleted = 10 }\nprotect = [\"/etc/hostname\"]\n")
	r = run(t, nil, pending...)
	if r.code != 0 || !strings.Contains(r.stdout, "applied snapshot ") || !strings.Contains(r.stderr, ": apply delay 4h -> none\n") {
		t.Fatalf("apply --pending without apply_delay: exit %d\nstdout: %s\nstderr: %s", r.code, r.stdout, r.stderr)
	}
	for name, want := range map[string]string{"srv/f3": "file 3\n", "etc/hostname": "the-standby\n", "etc/machine-id": "the-standby-id\n"} {
		if b, err := os.ReadFile(filepath.Join(target, name)); string(b) != want {
			t.Errorf("%s holds %q, %v; want %q", name, b, err, want)
		}
	}
	if st := state(); st.ApplyDelay != "" {
		t.Errorf("apply delay still %q", st.ApplyDelay)
	}

	// Out of the file, the pattern no longer protects; protect add's does.
	// The guard's limit goes back to its default.
	config("[set.os]\n")
	if out := runOK(t, "-c", cfg, "-r", repo, "protect", "list", "--set", "os"); out != "/etc/machine-id\n" {
		t.Errorf("protect list once the file has no protect:\n%s", out)
	}
	if st := state(); st.MaxDeleted != nil || len(st.ConfigProtect) != 0 || !slices.Equal(st.Protect, []string{"/etc/machine-id"}) {
		t.Errorf("state: %+v", st)
	}
	runOK(t, "-c", cfg, "-r", repo, "apply", "--set", "os", "--full", "--target", target)
	for name, want := range map[string]string{"etc/hostname": "primary\n", "etc/machine-id": "the-standby-id\n"} {
		if b, err := os.ReadFile(filepath.Join(target, name)); string(b) != want {
			t.Errorf("%s holds %q, %v; want %q", name, b, err, want)
		}
	}

	// A set the file does not name is the standby command's; without a
	// file nothing is written.
	config("[set.other]\napply_delay = \"1h\"\n")
	runOK(t, "-c", "", "-r", repo, "standby", "--set", "other", "--apply-delay", "3h")
	var other struct {
		ApplyDelay string `json:"apply_delay"`
	}
	decodeJSON(t, runOK(t, "-c", "", "-r", repo, "--json", "standby", "--set", "other"), &other)
	if other.ApplyDelay != "3h" {
		t.Errorf("without a configuration file: apply delay %q", other.ApplyDelay)
	}
	runOK(t, "-c", cfg, "-r", repo, "standby", "--set", "os", "--apply-delay", "2h")
	if st := state(); st.ApplyDelay != "2h" {
		t.Errorf("apply delay of a set the file does not name: %q", st.ApplyDelay)
	}
	decodeJSON(t, runOK(t, "-c", cfg, "-r", repo, "--json", "standby", "--set", "other"), &other)
	if other.ApplyDelay != "1h" {
		t.Errorf("with the file: apply delay %q", other.ApplyDelay)
	}

	// A file with problems stops an apply: it could protect what it would
	// write.
	config("[set.os]\nprotect = [\"[a-\"]\n")
	if r := run(t, nil, pending...); r.code != exitUsage || !strings.Contains(r.stderr, "set.os.protect[0]") {
		t.Errorf("apply with a bad configuration: exit %d, %s", r.code, r.stderr)
	}
}

// TestConfigStandbyServe: serve's automatic apply writes the
// configuration's standby settings first, so the file's delay makes it
// wait.
func TestConfigStandbyServe(t *testing.T) {
	base := t.TempDir()
	repo, root := filepath.Join(base, "repo"), filepath.Join(base, "root")
	writeFiles(t, root, map[string]string{"srv/a": "a\n"})
	runOK(t, "-r", repo, "init")
	runOK(t, "-r", repo, "snapshot", "--set", "os", "--root", root, "/srv")
	id := listSnapshots(t, repo)[0].ID
	due := snapshotTime(t, repo, id).Add(4 * time.Hour)
	cfg := filepath.Join(base, "understudy.toml")
	if err := os.WriteFile(cfg, []byte("[set.os]\napply_delay = \"4h\"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := chunkstore.Open(repo, chunkstore.OpenOptions{Mode: chunkstore.Exclusive, What: "test"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var stderr bytes.Buffer
	g := &globals{conf: configSource{path: cfg, explicit: true}, stderr: &stderr}
	reply, err := serveApply(slog.New(slog.NewTextHandler(io.Discard, nil)), g.configStandby)(t.Context(), r, "os", filepath.Join(base, "target"))
	if err != nil || reply.Status != usync.ApplyWaiting || reply.Snapshot.String() != id || !reply.DueAt.Equal(due) {
		t.Fatalf("serve's apply: %+v, %v", reply, err)
	}
	if !strings.Contains(stderr.String(), "set os: from "+cfg+": apply delay none -> 4h") {
		t.Errorf("stderr: %q", stderr.String())
	}
}
