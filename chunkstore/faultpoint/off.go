//go:build !faultpoints

package faultpoint

// Hit does nothing in a normal build; the compiler inlines it away.
func Hit(name string) {}
