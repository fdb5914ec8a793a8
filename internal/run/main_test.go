package run_test

import (
	"os"
	"testing"

	"github.com/idexd/idexd/internal/sandbox/inside"
)

func TestMain(m *testing.M) {
	inside.Main()
	os.Exit(m.Run())
}
