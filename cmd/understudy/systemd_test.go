package main

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// systemdConfig is a configuration with two scheduled sets, one by an
// interval and one by a cron expression, and a set for the standby side
// only, which gets no units.
const systemdConfig = `repo = "/var/lib/understudy/repo"

[standby.dr]
url = "/srv/standby/repo"

[set.accounts]
paths = ["/etc/passwd", "/etc/group"]
every = "1h"
to    = ["dr"]

[set.os]
paths = ["/usr", "/etc"]
every = "0 3 * * 1-5"

[set.web]
apply_delay = "2h"
`

// writeSystemdConfig writes text as the configuration file conf in a new
// directory and checks that loadConfig takes it.
func writeSystemdConfig(t *testing.T, dir, text string) string {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	conf := filepath.Join(dir, "understudy.toml")
	if err := os.WriteFile(conf, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := loadConfig(conf); err != nil {
		t.Fatal(err)
	}
	return conf
}

// systemdUnits runs systemd-units with the configuration conf and returns
// its exit code, stdout and stderr.
func systemdUnits(t *testing.T, conf string, opts systemdUnitsOptions, jsonOut bool) (int, string, string, error) {
	t.Helper()
	var out, errb bytes.Buffer
	g := &globals{stdout: &out, stderr: &errb, json: jsonOut}
	g.conf.defaultPath = filepath.Join(t.TempDir(), "none.toml")
	if conf != "" {
		g.conf.Set(conf)
	}
	err := runSystemdUnits(g, opts)
	return exitCode(err), out.String(), errb.String(), err
}

func TestSystemdUnits(t *testing.T) {
	tmp := t.TempDir()
	conf := writeSystemdConfig(t, tmp, systemdConfig)
	dir := filepath.Join(tmp, "units", "system") // made by the command
	exe, err := os.Executable()
	if err == nil {
		exe, err = filepath.EvalSymlinks(exe)
	}
	if err != nil {
		t.Fatal(err)
	}

	code, out, stderr, err := systemdUnits(t, conf, systemdUnitsOptions{dir: dir}, false)
	if code != 0 {
		t.Fatalf("exit %d: %v\n%s", code, err, stderr)
	}
	names := []string{"understudy-run-accounts.service", "understudy-run-accounts.timer",
		"understudy-run-os.service", "understudy-run-os.timer", "understudy-daemon.service"}
	for _, n := range names {
		if !strings.Contains(out, "created "+filepath.Join(dir, n)+"\n") {
			t.Errorf("no line for %s created in:\n%s", n, out)
		}
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
		if info, err := e.Info(); err != nil || info.Mode() != 0o644 {
			t.Errorf("%s: mode %v (%v), want 0644", e.Name(), info.Mode(), err)
		}
	}
	if want := slices.Sorted(slices.Values(names)); !slices.Equal(got, want) {
		t.Fatalf("files in %s: %q, want %q (no temporary file left)", dir, got, want)
	}
	read := func(name string) string {
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	lines := map[string][]string{
		"understudy-run-accounts.service": {
			"[Service]", "Type=oneshot",
			"ExecStart=" + exe + " -c " + conf + " run --wait 6h accounts",
			"Description=understudy run of set accounts",
			"Wants=network-online.target", "Nice=10", "IOSchedulingClass=best-effort", "KillMode=mixed",
		},
		"understudy-run-accounts.timer": {
			"[Timer]", "OnBootSec=5min", "OnUnitActiveSec=1h", "RandomizedDelaySec=0",
			"[Install]", "WantedBy=timers.target", "Description=understudy run of set accounts every 1h",
		},
		"understudy-run-os.service": {
			"Type=oneshot", "ExecStart=" + exe + " -c " + conf + " run --wait 6h os",
		},
		"understudy-run-os.timer": {
			"OnCalendar=Mon..Fri *-*-* 03:00:00", "Persistent=true", "RandomizedDelaySec=0", "WantedBy=timers.target",
			`Description=understudy run of set os at "0 3 * * 1-5"`,
		},
		"understudy-daemon.service": {
			"Type=exec", "ExecStart=" + exe + " -c " + conf + " daemon", "ExecReload=/bin/kill -HUP $MAINPID",
			"KillSignal=SIGTERM", "KillMode=mixed", "TimeoutStopSec=30min", "Restart=on-failure",
			"[Install]", "WantedBy=multi-user.target",
		},
	}
	for name, want := range lines {
		text := read(name)
		have := strings.Split(text, "\n")
		for _, l := range want {
			if !slices.Contains(have, l) {
				t.Errorf("%s has no line %q:\n%s", name, l, text)
			}
		}
		if !strings.Contains(text, "alternatives: enable one or the other") {
			t.Errorf("%s does not say that the timers and the daemon are alternatives:\n%s", name, text)
		}
		if strings.HasSuffix(name, ".service") && strings.Contains(name, "-run-") && strings.Contains(text, "[Install]") {
			t.Errorf("%s has an [Install] section: its timer starts it\n%s", name, text)
		}
		for _, bad := range []string{"OnBootSec", "OnCalendar"} {
			if name == "understudy-run-os.timer" && bad == "OnBootSec" || name == "understudy-run-accounts.timer" && bad == "OnCalendar" {
				if strings.Contains(text, bad) {
					t.Errorf("%s has %s:\n%s", name, bad, text)
				}
			}
		}
	}
	if strings.Contains(read("understudy-run-os.service"), "network-online") {
		t.Errorf("the service of os, which pushes nowhere, waits for the network")
	}
	// dir is not in systemd's search path: the hints link by path.
	for _, hint := range []string{
		"  systemctl link " + filepath.Join(dir, "understudy-run-accounts.service") + " " + filepath.Join(dir, "understudy-run-os.service") + "\n",
		"  systemctl enable --now " + filepath.Join(dir, "understudy-run-accounts.timer") + " " + filepath.Join(dir, "understudy-run-os.timer") + "\n",
		"  systemctl disable --now understudy-daemon.service\n",
		"  systemctl disable --now understudy-run-accounts.timer understudy-run-os.timer\n",
		"  systemctl enable --now " + filepath.Join(dir, "understudy-daemon.service") + "\n",
	} {
		if !strings.Contains(out, hint) {
			t.Errorf("output has no line %q:\n%s", hint, out)
		}
	}

	// Again: nothing to write, nothing touched.
	before := map[string]os.FileInfo{}
	for _, n := range names {
		before[n], _ = os.Stat(filepath.Join(dir, n))
	}
	code, out, stderr, err = systemdUnits(t, conf, systemdUnitsOptions{dir: dir}, false)
	if code != 0 {
		t.Fatalf("second time: exit %d: %v\n%s", code, err, stderr)
	}
	for _, n := range names {
		after, err := os.Stat(filepath.Join(dir, n))
		if err != nil || !os.SameFile(before[n], after) || !after.ModTime().Equal(before[n].ModTime()) {
			t.Errorf("%s was written again with the same contents", n)
		}
		if !strings.Contains(out, "unchanged "+filepath.Join(dir, n)+"\n") {
			t.Errorf("no line for %s unchanged in:\n%s", n, out)
		}
	}

	// A unit edited by hand, and a schedule changed: without --force
	// nothing is written and the edited file is named.
	edited := filepath.Join(dir, "understudy-run-accounts.timer")
	handMade := read("understudy-run-accounts.timer") + "# edited by hand\n"
	if err := os.WriteFile(edited, []byte(handMade), 0o644); err != nil {
		t.Fatal(err)
	}
	writeSystemdConfig(t, tmp, strings.Replace(systemdConfig, `"0 3 * * 1-5"`, `"30 4 * * *"`, 1))
	code, _, _, err = systemdUnits(t, conf, systemdUnitsOptions{dir: dir}, false)
	if code != exitUsage || err == nil || !strings.Contains(err.Error(), edited) || !strings.Contains(err.Error(), "--force") ||
		!strings.Contains(err.Error(), "understudy-run-os.timer") {
		t.Fatalf("edited units without --force: exit %d, %v; want exit 2 naming both files and --force", code, err)
	}
	if read("understudy-run-accounts.timer") != handMade || !strings.Contains(read("understudy-run-os.timer"), "OnCalendar=Mon..Fri *-*-* 03:00:00\n") {
		t.Fatalf("a refused systemd-units changed files")
	}

	// --force replaces them; --json says what became of each file.
	code, out, stderr, err = systemdUnits(t, conf, systemdUnitsOptions{dir: dir, force: true}, true)
	if code != 0 {
		t.Fatalf("--force: exit %d: %v\n%s", code, err, stderr)
	}
	var rep unitsReport
	if err := json.Unmarshal([]byte(out), &rep); err != nil {
		t.Fatalf("--json: %v\n%s", err, out)
	}
	states := map[string]string{}
	for _, f := range rep.Files {
		states[filepath.Base(f.Path)] = f.State
		if filepath.Dir(f.Path) != dir || f.Unit != filepath.Base(f.Path) {
			t.Errorf("--json: file %q, unit %q", f.Path, f.Unit)
		}
	}
	want := map[string]string{"understudy-run-accounts.service": "unchanged", "understudy-run-accounts.timer": "replaced",
		"understudy-run-os.service": "unchanged", "understudy-run-os.timer": "replaced", "understudy-daemon.service": "unchanged"}
	if len(states) != len(want) || rep.Dir != dir || rep.Config != conf || rep.Binary != exe {
		t.Errorf("--json: %+v", rep)
	}
	for n, s := range want {
		if states[n] != s {
			t.Errorf("--json: %s is %q, want %q\n%s", n, states[n], s, out)
		}
	}
	if strings.Contains(read("understudy-run-accounts.timer"), "edited by hand") ||
		!strings.Contains(read("understudy-run-os.timer"), "OnCalendar=*-*-* 04:30:00\n") {
		t.Errorf("--force did not write the units anew")
	}

	// A set no longer scheduled leaves its units, which are named.
	writeSystemdConfig(t, tmp, strings.NewReplacer(`every = "1h"`, "", `"0 3 * * 1-5"`, `"30 4 * * *"`).Replace(systemdConfig))
	code, out, stderr, err = systemdUnits(t, conf, systemdUnitsOptions{dir: dir}, false)
	if code != 0 {
		t.Fatalf("without accounts' schedule: exit %d: %v\n%s", code, err, stderr)
	}
	for _, ext := range []string{".service", ".timer"} {
		p := filepath.Join(dir, "understudy-run-accounts"+ext)
		if !strings.Contains(stderr, "warning: "+p+" is not for a set") {
			t.Errorf("no warning about %s in:\n%s", p, stderr)
		}
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s: %v; the stale unit is left for the administrator", p, err)
		}
	}
}

func TestSystemdUnitsRefuses(t *testing.T) {
	tmp := t.TempDir()
	dir := filepath.Join(tmp, "units")

	code, _, _, err := systemdUnits(t, "", systemdUnitsOptions{dir: dir}, false)
	if code != exitUsage || err == nil || !strings.Contains(err.Error(), "-c FILE") {
		t.Errorf("without a configuration file: exit %d, %v; want exit 2 asking for -c FILE", code, err)
	}
	conf := writeSystemdConfig(t, tmp, systemdConfig)
	if code, _, _, err := systemdUnits(t, conf, systemdUnitsOptions{}, false); code != exitUsage || err == nil || !strings.Contains(err.Error(), "--dir") {
		t.Errorf("without --dir: exit %d, %v; want exit 2 asking for --dir", code, err)
	}
	noRepo := writeSystemdConfig(t, filepath.Join(tmp, "norepo"), strings.Replace(systemdConfig, `repo = "/var/lib/understudy/repo"`, "", 1))
	if code, _, _, err := systemdUnits(t, noRepo, systemdUnitsOptions{dir: dir}, false); code != exitUsage || err == nil || !strings.Contains(err.Error(), "names no repository") {
		t.Errorf("without a repository: exit %d, %v; want exit 2", code, err)
	}
	if _, err := os.Stat(dir); err == nil {
		t.Errorf("a refused systemd-units made %s", dir)
	}
}

// TestSystemdUnitsVerify has systemd-analyze verify the units, written for
// a binary and a configuration in directories whose names need quoting,
// with a cron expression that takes two OnCalendar= lines.
func TestSystemdUnitsVerify(t *testing.T) {
	if _, err := exec.LookPath("systemd-analyze"); err != nil {
		t.Skip("systemd-analyze is not installed: cannot verify the units")
	}
	tmp := t.TempDir()
	good := filepath.Join(tmp, "probe", "probe.service")
	writeFiles(t, tmp, map[string]string{"probe/probe.service": "[Service]\nType=oneshot\nExecStart=/bin/true\n"})
	if out, err := exec.Command("systemd-analyze", "verify", good).CombinedOutput(); err != nil {
		t.Skipf("systemd-analyze verify does not work here (it may need a running systemd): %v\n%s", err, out)
	}

	// systemd takes no quote or backslash in a program's path.
	odd := filepath.Join(tmp, `odd dir %h $HOME "q" \n`)
	conf := writeSystemdConfig(t, odd, strings.Replace(systemdConfig, `"0 3 * * 1-5"`, `"CRON_TZ=Europe/Berlin 0 3 13 * fri"`, 1))
	bin := filepath.Join(tmp, "bin dir %h $HOME", "understudy")
	writeFiles(t, tmp, map[string]string{"bin dir %h $HOME/understudy": "#!/bin/sh\n"})
	if err := os.Chmod(bin, 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := loadConfig(conf)
	if err != nil {
		t.Fatal(err)
	}
	units, err := renderUnits(unitEnv{binary: bin, config: conf, repo: filepath.Join(odd, "repo")}, cfg)
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tmp, "units")
	if err := writeUnits(dir, units, false); err != nil {
		t.Fatal(err)
	}
	timer, err := os.ReadFile(filepath.Join(dir, "understudy-run-os.timer"))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range []string{"OnCalendar=*-*-13 03:00:00 Europe/Berlin\n", "OnCalendar=Fri *-*-* 03:00:00 Europe/Berlin\n"} {
		if !strings.Contains(string(timer), l) {
			t.Errorf("understudy-run-os.timer has no line %q:\n%s", l, timer)
		}
	}
	var paths []string
	for _, u := range units {
		paths = append(paths, u.Path)
	}
	cmd := exec.Command("systemd-analyze", append([]string{"verify"}, paths...)...)
	cmd.Env = append(os.Environ(), "SYSTEMD_LOG_COLOR=0")
	out, err := cmd.CombinedOutput()
	// verify also reports on the units ours depend on; ours must be clean,
	// and the binary found at its path once systemd has unquoted it.
	var ours []string
	for line := range strings.Lines(string(out)) {
		if strings.Contains(line, "understudy") || strings.Contains(line, dir) {
			ours = append(ours, line)
		}
	}
	if err != nil || len(ours) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}

	// A binary path that systemd unquotes to another file is reported:
	// the check above can fail.
	os.Rename(bin, bin+".gone")
	out, err = exec.Command("systemd-analyze", append([]string{"verify"}, paths...)...).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "is not executable") {
		t.Errorf("systemd-analyze verify with the binary gone: %v\n%s", err, out)
	}
}

func TestSystemdExecWord(t *testing.T) {
	for _, c := range []struct {
		in      string
		program bool
		want    string
	}{
		{"/usr/local/bin/understudy", true, "/usr/local/bin/understudy"},
		{"/opt/my tools/100%/$x/understudy", true, `"/opt/my tools/100%%/$x/understudy"`},
		{"--wait", false, "--wait"},
		{"/etc/under study.toml", false, `"/etc/under study.toml"`},
		{`/a"b\c`, false, `"/a\"b\\c"`},
		{"/x/100%/$HOME", false, `"/x/100%%/$$HOME"`},
		{"", false, `""`},
	} {
		got, err := execWord(c.in, c.program)
		if err != nil || got != c.want {
			t.Errorf("execWord(%q, %v) = %q, %v; want %q", c.in, c.program, got, err, c.want)
		}
	}
	for _, c := range []struct {
		in      string
		program bool
	}{{"/a\nb", false}, {"/a\tb", true}, {`/a"b`, true}, {`/a\b`, true}, {"/a'b", true}} {
		if got, err := execWord(c.in, c.program); err == nil {
			t.Errorf("execWord(%q, %v) = %q, want an error", c.in, c.program, got)
		}
	}
	for d, want := range map[time.Duration]string{
		time.Minute: "1min", 90 * time.Second: "1min 30s", 6 * time.Hour: "6h", 36 * time.Hour: "1d 12h",
		1500 * time.Millisecond: "1s 500ms",
	} {
		if got := systemdSpan(d); got != want {
			t.Errorf("systemdSpan(%v) = %q, want %q", d, got, want)
		}
	}
}
