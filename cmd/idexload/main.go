// Command idexload drives a running idexd as many simulated students and
// checks that nothing leaked and nothing was lost (see internal/load and
// docs/load.md). It exits 0 when every check passed, 1 when one failed,
// 2 on bad usage or when the load could not be carried out.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/idexd/idexd/internal/harness"
	"github.com/idexd/idexd/internal/load"
)

func main() {
	os.Exit(run(os.Args[1:]))
}

func run(args []string) int {
	fs := flag.NewFlagSet("idexload", flag.ContinueOnError)
	socket := fs.String("socket", "/run/idexd/idexd.sock", "idexd's socket")
	spawn := fs.String("spawn", "", "start a throwaway idexd from this binary (temporary directories and cgroup parent) instead of using --socket")
	maxRuns := fs.Int("max-runs", 0, "with --spawn: max_runs (default: enough for --hold and --concurrency)")
	warmRuns := fs.Int("warm-runs", 0, "the daemon's warm_runs (with --spawn, set to it): samples wait until that many warm helpers are ready; 0 the daemon's default, -1 none")
	keepEnded := fs.String("keep-ended", "30s", "with --spawn: keep_ended (1s with --cycles: kept runs are memory that follows the cycle rate, not a leak)")
	pid := fs.Int("pid", 0, "the daemon's pid (default: found from the socket)")
	students := fs.Int("students", 60, "simulated students")
	prefix := fs.String("prefix", "", "student name prefix (default load, or cycle with --cycles)")
	runs := fs.Int("runs", 2000, "runs of the mix to start")
	conc := fs.Int("concurrency", 32, "runs in flight at once (with --cycles: workers, default 4)")
	dur := fs.Duration("duration", 10*time.Minute, "bound on the time spent starting the mix's runs")
	hold := fs.Int("hold", 0, "first hold this many runs alive at once (e.g. 500), then end them")
	mixFlag := fs.String("mix", "", "weights, e.g. quick=30,slow=20,input=15,exception=6,exit3=6,abort=6,forkbomb=3,flood=7,memhog=7 (the default)")
	stopRate := fs.Float64("stop-rate", 0.15, "share of runs stopped at a random moment")
	reattach := fs.Float64("reattach-rate", 0.4, "share of runs whose event reader disconnects mid-run and reattaches with after=SEQ")
	seed := fs.Uint64("seed", uint64(time.Now().UnixNano()), "random seed (printed, to replay a mix)")
	allUIDs := fs.Bool("all-uids", false, "count every process in the student uid range, not only those under the students' root")
	cycles := fs.Int("cycles", 0, "instead of the mix: this many start/stop cycles of a sleeping script, with RSS/fd/goroutine slopes")
	sampleEvery := fs.Int("sample-every", 1000, "with --cycles: sample the daemon every this many cycles")
	conns := fs.Int("conns", 0, "instead of the mix: open and hold this many connections (half silent, half idle keep-alive) while other students run")
	connsWait := fs.Duration("conns-wait", 13*time.Second, "with --conns: hold them this long after the runs, then count those the server closed")
	stuck := fs.Int("stuck-readers", 20, "with --conns: readers of a flooding run's events that never read")
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: idexload [flags]\n\nDrives a running idexd (--socket) as many students, or a throwaway one (--spawn BIN), and checks for leftovers.\n\n")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return 0
		}
		return 2
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	mix, err := load.ParseMix(*mixFlag)
	if err != nil {
		fmt.Fprintln(os.Stderr, "idexload:", err)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	if *spawn != "" {
		if *cycles > 0 && !set["keep-ended"] {
			*keepEnded = "1s"
		}
		mr := *maxRuns
		if mr == 0 {
			mr = max(256, *hold+*conc+16)
		}
		d, err := harness.Start(ctx, harness.Config{Idexd: *spawn, Name: "idexload", Host: "idexload", MaxRuns: mr, KeepEnded: *keepEnded, WarmRuns: *warmRuns,
			NoStudentLimits: true})
		if err != nil {
			fmt.Fprintln(os.Stderr, "idexload: start idexd:", err)
			return 2
		}
		defer func() {
			if err := d.Cleanup(); err != nil {
				fmt.Fprintln(os.Stderr, "idexload: clean up idexd:", err)
			}
		}()
		fmt.Printf("idexload: started idexd pid %d on %s (max_runs %d, warm_runs %d, keep_ended %s, cgroup parent %s)\n",
			d.PID(), d.Socket, mr, load.WarmHelpers(*warmRuns), *keepEnded, d.CgroupParent)
		*socket, *pid = d.Socket, d.PID()
	}

	if *conns > 0 {
		rep, err := load.Connections(ctx, load.ConnOptions{Socket: *socket, PID: *pid, Conns: *conns, StuckReaders: *stuck,
			Wait: *connsWait, Out: os.Stdout})
		if rep != nil {
			rep.Print(os.Stdout)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "idexload:", err)
			return 2
		}
		if !rep.Pass() {
			return 1
		}
		return 0
	}

	if *cycles > 0 {
		c := *conc
		if !set["concurrency"] {
			c = 4
		}
		p := *prefix
		if p == "" {
			p = "cycle"
		}
		fmt.Printf("idexload: %d cycles, %d workers, sampling every %d\n", *cycles, c, *sampleEvery)
		rep, err := load.Cycles(ctx, load.CycleOptions{Socket: *socket, PID: *pid, Cycles: *cycles, SampleEvery: *sampleEvery,
			Concurrency: c, Prefix: p, WarmRuns: *warmRuns, Out: os.Stdout})
		if rep != nil {
			rep.Print(os.Stdout)
		}
		if err != nil {
			fmt.Fprintln(os.Stderr, "idexload:", err)
			return 2
		}
		if !rep.Pass() {
			return 1
		}
		return 0
	}

	fmt.Printf("idexload: %d students, %d runs at concurrency %d, hold %d, seed %d\n", *students, *runs, *conc, *hold, *seed)
	rep, err := load.Run(ctx, load.Options{Socket: *socket, PID: *pid, Students: *students, Prefix: *prefix, Runs: *runs,
		Concurrency: *conc, Duration: *dur, Hold: *hold, Mix: mix, StopRate: *stopRate, ReattachRate: *reattach,
		Seed: *seed, AllUIDs: *allUIDs, WarmRuns: *warmRuns, Out: os.Stdout})
	if err != nil {
		fmt.Fprintln(os.Stderr, "idexload:", err)
		return 2
	}
	rep.Print(os.Stdout)
	if rep.Failures() > 0 {
		return 1
	}
	return 0
}
