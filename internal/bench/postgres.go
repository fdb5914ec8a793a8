package bench

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/idexd/idexd/internal/testutil/pgtest"
)

// postgres measures start->end on the PostgreSQL store: a throwaway
// cluster (pgtest's, with PostgreSQL's default durability kept), and a
// second idexd configured with database_url. Whether idexd has a
// PostgreSQL store is found out by asking it: an idexd built without one
// refuses database_url at start, and the section is skipped with its words.
func (b *bench) postgres(ctx context.Context) error {
	if err := pgtest.Installed(); err != nil {
		b.skip("postgres", err.Error())
		return nil //nolint:nilerr // not installed is a skip, shown in the table, not a failure
	}
	cl, notes, err := pgtest.StartCluster(pgtest.ClusterOptions{Durable: true})
	for _, n := range notes {
		b.progress("postgres: %s", n)
	}
	if err != nil {
		return fmt.Errorf("start a PostgreSQL cluster: %w", err)
	}
	err = b.postgresOn(ctx, cl)
	return errors.Join(err, cl.Stop())
}

func (b *bench) postgresOn(ctx context.Context, cl *pgtest.Cluster) error {
	d, err := startDaemon(ctx, b.o, daemonConfig{maxRuns: 300, databaseURL: cl.URL("postgres")})
	if err != nil {
		msg := err.Error()
		if strings.Contains(msg, "PostgreSQL") || strings.Contains(msg, "database_url") {
			b.skip("postgres", "idexd does not run on PostgreSQL here: "+lastLine(msg))
			return nil
		}
		return err
	}
	b.progress("postgres: %d back-to-back pairs", b.o.N)
	end, err := b.latency(ctx, d, "PostgreSQL store, back-to-back", b.o.N, 0)
	if err == nil && b.sqliteEnd != nil {
		pg, sq := percentile(end.idexd, 50), percentile(b.sqliteEnd.idexd, 50)
		b.notes = append(b.notes, fmt.Sprintf("PostgreSQL store vs SQLite store, start->end p50 back-to-back: %.2f ms vs %.2f ms (%+.2f ms); "+
			"the throwaway cluster keeps PostgreSQL's default durability (fsync on) on this machine's disk, over a Unix socket.", pg, sq, pg-sq))
	}
	b.logProblems("PostgreSQL idexd", d)
	return errors.Join(err, d.stop())
}

func (b *bench) skip(section, reason string) {
	b.progress("%s: skipped (%s)", section, reason)
	b.t.section(fmt.Sprintf("%s: skipped (%s)", section, reason))
}

func lastLine(s string) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	for i := len(lines) - 1; i >= 0; i-- {
		if l := strings.TrimSpace(lines[i]); l != "" {
			return l
		}
	}
	return s
}
