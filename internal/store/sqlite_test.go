package store_test

import (
	"context"
	"testing"

	"github.com/idexd/idexd/internal/store"
	"github.com/idexd/idexd/internal/store/storetest"
)

func TestSQLiteConformance(t *testing.T) {
	storetest.Run(t, func(t *testing.T) store.Store {
		s, err := store.OpenSQLite(context.Background(), t.TempDir())
		if err != nil {
			t.Fatalf("open sqlite store: %v", err)
		}
		return s
	})
}
