// Package version holds the build's version, set by the Makefile's -ldflags.
package version

// Version is "dev" unless the build stamped it.
var Version = "dev"
