package server_test

import (
	"testing"

	"github.com/idexd/idexd/internal/testutil"
)

func TestMain(m *testing.M) { testutil.Main(m) }
