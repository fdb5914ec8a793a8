package logging

import "testing"

func TestFieldName(t *testing.T) {
	cases := map[string]string{"run": "RUN", "peer_uid": "PEER_UID", "start-ms": "START_MS", "_x": "X", "9a": "A", "é": "ATTR"}
	for in, want := range cases {
		if got := fieldName(nil, in); got != want {
			t.Errorf("fieldName(%q) = %q, want %q", in, got, want)
		}
	}
	if got := fieldName([]string{"store"}, "kind"); got != "STORE_KIND" {
		t.Errorf("grouped: %q", got)
	}
}
