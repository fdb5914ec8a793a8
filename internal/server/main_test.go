package server_test

import (
	"os"
	"testing"

	"github.com/idexd/idexd/internal/sandbox"
)

func TestMain(m *testing.M) {
	sandbox.Helper()
	os.Exit(m.Run())
}
