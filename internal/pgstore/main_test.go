package pgstore

import (
	"testing"

	"github.com/idexd/idexd/internal/testutil/pgtest"
)

// TestMain stops the test cluster that pgtest.Start shares among this
// package's tests, and removes its directory.
func TestMain(m *testing.M) { pgtest.Main(m) }
