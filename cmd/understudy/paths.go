package main

import "strings"

// cleanSnapPath turns a path given on the command line into the absolute,
// clean form snapshots use: "/" joined components, no "." or empty ones.
func cleanSnapPath(p string) string {
	var parts []string
	for _, c := range strings.Split(p, "/") {
		if c != "" && c != "." {
			parts = append(parts, c)
		}
	}
	return "/" + strings.Join(parts, "/")
}

func joinSnapPath(dir, name string) string {
	if dir == "/" {
		return "/" + name
	}
	return dir + "/" + name
}
