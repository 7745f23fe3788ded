package faultpoint

import (
	"fmt"
	"strconv"
	"strings"
)

// The environment variables a faultpoints build reads (see the package
// documentation).
const (
	Env    = "UNDERSTUDY_FAULT"
	LogEnv = "UNDERSTUDY_FAULT_LOG"
)

// Parse reads a value of UNDERSTUDY_FAULT: "name" (the first hit) or
// "name:N" (the Nth, N ≥ 1). The empty string arms nothing (name "").
func Parse(v string) (name string, n int64, err error) {
	if v == "" {
		return "", 0, nil
	}
	name, count, ok := strings.Cut(v, ":")
	if name == "" {
		return "", 0, fmt.Errorf("%s=%q: no fault point name before the colon", Env, v)
	}
	if !ok {
		return name, 1, nil
	}
	n, err = strconv.ParseInt(count, 10, 64)
	if err != nil || n < 1 {
		return "", 0, fmt.Errorf("%s=%q: want name or name:N with N a whole number from 1", Env, v)
	}
	return name, n, nil
}
