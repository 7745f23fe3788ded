package main

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// label escapes a label value as the text format wants: backslash,
// double quote and newline.
var label = strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace

// writeMetrics writes the status in Prometheus text exposition format to
// file, through a temporary file in the same directory renamed over it, so
// that a collector never reads half a file.
// asOf is when the sets were saved in status.json, zero when they are live.
func writeMetrics(file string, sets []*setStatus, now, asOf time.Time) error {
	var b strings.Builder
	// family writes one metric family as the format wants it: its HELP and
	// TYPE lines, then all its samples together; samples calls sample once
	// for each.
	family := func(name, help string, samples func(sample func(labels string, v float64))) {
		fmt.Fprintf(&b, "# HELP %s %s\n# TYPE %s gauge\n", name, help, name)
		samples(func(labels string, v float64) {
			fmt.Fprintf(&b, "%s%s %s\n", name, labels, strconv.FormatFloat(v, 'f', -1, 64))
		})
	}
	boolf := func(v bool) float64 {
		if v {
			return 1
		}
		return 0
	}
	setLabel := func(ss *setStatus) string { return fmt.Sprintf("{set=\"%s\"}", label(ss.Set)) }
	perSet := func(v func(ss *setStatus) (float64, bool)) func(func(string, float64)) {
		return func(sample func(string, float64)) {
			for _, ss := range sets {
				if x, ok := v(ss); ok {
					sample(setLabel(ss), x)
				}
			}
		}
	}
	perTarget := func(v func(t *targetStatus) (float64, bool)) func(func(string, float64)) {
		return func(sample func(string, float64)) {
			for _, ss := range sets {
				for i := range ss.Targets {
					t := &ss.Targets[i]
					if x, ok := v(t); ok {
						sample(fmt.Sprintf("{set=\"%s\",target=\"%s\"}", label(ss.Set), label(t.Target)), x)
					}
				}
			}
		}
	}
	perStandby := func(v func(sb *standbyStatus) (float64, bool)) func(func(string, float64)) {
		return func(sample func(string, float64)) {
			for _, ss := range sets {
				for i := range ss.Standbys {
					sb := &ss.Standbys[i]
					if x, ok := v(sb); ok {
						sample(fmt.Sprintf("{set=\"%s\",standby=\"%s\"}", label(ss.Set), label(sb.Standby)), x)
					}
				}
			}
		}
	}
	var age float64
	if !asOf.IsZero() {
		age = math.Round(now.Sub(asOf).Seconds())
	}
	family("understudy_repository_busy", "1 if a writer held the repository and the status is the one it last saved.",
		func(sample func(string, float64)) { sample("", boolf(!asOf.IsZero())) })
	family("understudy_status_age_seconds", "Age of the status shown: 0 when read from the repository, else the age of the one saved.",
		func(sample func(string, float64)) { sample("", age) })
	family("understudy_snapshots", "Snapshots of the set in this repository.",
		perSet(func(ss *setStatus) (float64, bool) { return float64(ss.Snapshots), true }))
	family("understudy_latest_snapshot_timestamp_seconds", "Time of the set's latest snapshot.",
		perSet(func(ss *setStatus) (float64, bool) { return float64(ss.LatestTime.Unix()), !ss.Latest.IsZero() }))
	family("understudy_promoted", "1 if this host was promoted to the set's primary.",
		perSet(func(ss *setStatus) (float64, bool) { return boolf(!ss.Promoted.IsZero()), true }))
	family("understudy_held", "1 if automatic applies of the set are held.",
		perSet(func(ss *setStatus) (float64, bool) { return boolf(!ss.Held.IsZero()), true }))
	family("understudy_apply_lag_seconds", "Age of the snapshot applied to the target: the recovery point.",
		perTarget(func(t *targetStatus) (float64, bool) {
			return math.Round(now.Sub(t.AppliedTime).Seconds()), !t.AppliedTime.IsZero()
		}))
	family("understudy_mid_apply", "1 if an apply to the target was interrupted.",
		perTarget(func(t *targetStatus) (float64, bool) { return boolf(t.MidApply), true }))
	family("understudy_apply_error", "1 if the last apply or automatic apply failed or was refused.",
		perTarget(func(t *targetStatus) (float64, bool) { return boolf(t.LastError != ""), true }))
	family("understudy_apply_pending", "Snapshots of the set newer than the one applied to the target.",
		perTarget(func(t *targetStatus) (float64, bool) { return float64(t.Pending), true }))
	family("understudy_apply_first_due_timestamp_seconds", "When the oldest pending snapshot has waited out the apply delay.",
		perTarget(func(t *targetStatus) (float64, bool) { return float64(t.FirstDue.Unix()), !t.FirstDue.IsZero() }))
	family("understudy_last_run_timestamp_seconds", "When run last finished the set, on its primary.",
		perSet(func(ss *setStatus) (float64, bool) { return float64(ss.LastRun.Unix()), !ss.LastRun.IsZero() }))
	family("understudy_run_error", "1 if the set's last run failed (not counting a refusal by a guard).",
		perSet(func(ss *setStatus) (float64, bool) {
			return boolf(ss.LastRunError != "" && !ss.LastRunRefused), !ss.LastRun.IsZero()
		}))
	family("understudy_run_refused", "1 if the set's last run was refused by a guard (a pre-flight check, a promotion, an apply guard).",
		perSet(func(ss *setStatus) (float64, bool) { return boolf(ss.LastRunRefused), !ss.LastRun.IsZero() }))
	family("understudy_last_push_timestamp_seconds", "When the newest snapshot pushed to the standby was pushed.",
		perStandby(func(sb *standbyStatus) (float64, bool) { return float64(sb.PushedAt.Unix()), !sb.Pushed.IsZero() }))
	family("understudy_pushed_snapshot_timestamp_seconds", "Time of the newest snapshot pushed to the standby: the recovery point as the primary knows it.",
		perStandby(func(sb *standbyStatus) (float64, bool) { return float64(sb.PushedTime.Unix()), !sb.Pushed.IsZero() }))
	family("understudy_push_error", "1 if the last push to the standby failed.",
		perStandby(func(sb *standbyStatus) (float64, bool) { return boolf(sb.LastError != ""), true }))
	if err := writeFileAtomic(file, []byte(b.String()), 0o644); err != nil {
		return fmt.Errorf("--metrics %s: %w", file, err)
	}
	return nil
}
