package ops

import (
	"context"
	"log/slog"
	"log/syslog"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"unicode"
)

// syslogHandler sends records at level error and above to syslog as
// "MESSAGE KEY=VALUE...", keys of groups dotted as slog.TextHandler writes
// them. log/syslog reconnects once when a write fails (syslogd restarted);
// if that fails too, warn reports it, once.
type syslogHandler struct {
	w      *syslog.Writer
	closed *atomic.Bool // set by Log.Close; shared, as failed, by the derived handlers
	failed *sync.Once
	warn   func(msg string, args ...any)
	prefix string // the open groups, each followed by "."
	attrs  string // " KEY=VALUE" of the attributes given by WithAttrs
}

func (h *syslogHandler) Enabled(_ context.Context, l slog.Level) bool {
	return l >= slog.LevelError
}

func (h *syslogHandler) Handle(_ context.Context, r slog.Record) error {
	if h.closed.Load() {
		return nil // log/syslog would connect again
	}
	var b strings.Builder
	b.WriteString(r.Message)
	b.WriteString(h.attrs)
	r.Attrs(func(a slog.Attr) bool {
		appendSyslogAttr(&b, h.prefix, a)
		return true
	})
	line := strings.TrimLeft(b.String(), " ")
	if err := h.w.Err(line); err != nil {
		h.failed.Do(func() { h.warn("cannot write to syslog; failures are only in this log", "err", err) })
		return err
	}
	return nil
}

func (h *syslogHandler) WithAttrs(as []slog.Attr) slog.Handler {
	if len(as) == 0 {
		return h
	}
	var b strings.Builder
	b.WriteString(h.attrs)
	for _, a := range as {
		appendSyslogAttr(&b, h.prefix, a)
	}
	h2 := *h
	h2.attrs = b.String()
	return &h2
}

func (h *syslogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	h2 := *h
	h2.prefix += name + "."
	return &h2
}

// appendSyslogAttr appends " KEY=VALUE" for a, or for each attribute of a
// group, following slog's rules: empty attributes and empty groups are left
// out, a group without a key is inlined.
func appendSyslogAttr(b *strings.Builder, prefix string, a slog.Attr) {
	a.Value = a.Value.Resolve()
	if a.Equal(slog.Attr{}) {
		return
	}
	if a.Value.Kind() == slog.KindGroup {
		if a.Key != "" {
			prefix += a.Key + "."
		}
		for _, g := range a.Value.Group() {
			appendSyslogAttr(b, prefix, g)
		}
		return
	}
	b.WriteByte(' ')
	b.WriteString(syslogQuoted(prefix + a.Key))
	b.WriteByte('=')
	b.WriteString(syslogQuoted(a.Value.String()))
}

// syslogQuoted returns s as it is, or Go-quoted if it is empty or holds a
// space, '=', '"' or a character that is not printable, as slog.TextHandler
// does.
func syslogQuoted(s string) string {
	if s == "" || strings.IndexFunc(s, func(r rune) bool {
		return r == '=' || r == '"' || unicode.IsSpace(r) || !unicode.IsPrint(r)
	}) >= 0 {
		return strconv.Quote(s)
	}
	return s
}
