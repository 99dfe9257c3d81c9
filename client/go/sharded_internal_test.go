package optd

import (
	"net"
	"reflect"
	"testing"
)

// ResolveShards' addresses: sorted, each once, IPv6 in brackets.
func TestJoinHostsPortSortsAndRemovesRepeats(t *testing.T) {
	ips := []net.IPAddr{{IP: net.ParseIP("10.0.0.12")}, {IP: net.ParseIP("10.0.0.3")},
		{IP: net.ParseIP("10.0.0.12")}, {IP: net.ParseIP("fd00::1")}}
	got := joinHostsPort(ips, 50051)
	want := []string{"10.0.0.12:50051", "10.0.0.3:50051", "[fd00::1]:50051"}
	if !reflect.DeepEqual(got, want) {
		t.Fatalf("joinHostsPort = %q, want %q", got, want)
	}
}

// The shards' versions agree when every shard asked reports the same one (-1: not asked).
func TestShardVersionsAgree(t *testing.T) {
	for _, tc := range []struct {
		v      ShardVersions
		agree  bool
		lowest int64
	}{
		{ShardVersions{3, 3, 3}, true, 3},
		{ShardVersions{-1, 3, -1}, true, 3},
		{ShardVersions{4, 3, 4}, false, 3},
		{ShardVersions{-1, -1}, true, -1},
	} {
		if tc.v.Agree() != tc.agree || tc.v.lowest() != tc.lowest {
			t.Errorf("%v: Agree() = %v, lowest() = %d; want %v, %d", tc.v, tc.v.Agree(),
				tc.v.lowest(), tc.agree, tc.lowest)
		}
	}
}
