// Package load drives a running idexd over its Unix socket as many
// simulated students, and then proves that the daemon kept nothing it
// should have given back and lost nothing it should have kept.
//
// Three forms share the checks:
//
//   - the mix (Run): students run a weighted mix of scripts — quick prints,
//     sleepers, input() readers answered over stdin, crashes (exception,
//     exit 3, os.abort), and hostile programs (fork bomb held by the pids
//     limit, output flood, memory hog) — while a share of runs is stopped at
//     a random moment and a share of event readers disconnects mid-run and
//     reattaches with after=SEQ. Optionally a number of runs is first held
//     alive at the same time (Options.Hold: 500 concurrent runs).
//   - the cycles (Cycles): N start/stop cycles of a sleeping script, with
//     the daemon's RSS, fds and goroutines sampled at rest, the
//     least-squares slope of each checked against a documented threshold,
//     and the namespaces and mounts of the last sample against the first.
//   - a throwaway daemon (package harness) for the tests and `make soak`.
//
// The daemon is compared with itself only at rest (rest.go): no run active
// and its warm pool full, three looks in a row. At the end of a mix, every
// count below must be zero, or the report fails: cgroups, fds,
// goroutines, locks and active runs of the daemon above what they were
// before the load (GET /v1/debug/state and /proc); namespaces held by the
// daemon, its processes or its mounts, and mounts under its directories,
// above the same baseline, and the host's namespaces and mount table
// beyond a tolerance for other work (census.go);
// run cgroup directories left in any hierarchy; records still "running";
// processes of the load's students alive (zombies count as dead: PID 1
// reaps orphans late on these machines); files outside their student's
// directory; events lost, duplicated or altered for any reader; runs that
// ended for a reason, or with an output, other than their script's.
//
// The load runs as root, like the web tier: it learns each student's
// directory with PUT /v1/students/{name} and writes the scripts there with
// mode 0666.
package load
