package server

import (
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/berthhq/berth/lease"
	"github.com/berthhq/berth/store"
)

// placer is a replica's Manager reduced to what place reads: its node id,
// the nodes as last read, and when each one's heartbeat last moved.
func placer(self string, nodes []*store.Node, stale ...string) *Manager {
	m := &Manager{cfg: Config{Node: self, Metrics: NewMetrics(nil)}, live: map[string]*instance{}}
	cl := &cluster{timing: lease.Default, nodes: map[string]*store.Node{}, beats: map[string]beat{}}
	now := monoNow()
	for _, n := range nodes {
		c := *n // place counts what it sends to a node in its copy
		cl.nodes[n.ID] = &c
		cl.beats[n.ID] = beat{at: time.Unix(1, 0), seen: now}
	}
	for _, id := range stale { // its heartbeat has not moved for a lease
		cl.beats[id] = beat{at: time.Unix(1, 0), seen: now - int64(lease.Default.TTL) - 1}
	}
	m.cluster = cl
	return m
}

func TestManager_place(t *testing.T) {
	proc := []string{"process"}
	both := []string{"docker", "process"}
	tests := []struct {
		name    string
		self    string
		nodes   []*store.Node
		stale   []string
		cutOff  bool
		here    int // backends this node runs
		runtime string
		want    []string // any of these; none: no node
	}{
		{name: "here while this node can run it", self: "a", runtime: "process",
			nodes: []*store.Node{{ID: "a", Runtimes: proc}, {ID: "b", Runtimes: proc}}, want: []string{"a"}},
		{name: "drained here: another", self: "a", runtime: "process",
			nodes: []*store.Node{{ID: "a", Runtimes: proc, Drained: true}, {ID: "b", Runtimes: proc}}, want: []string{"b"}},
		{name: "without the runtime here: a node that has it", self: "a", runtime: "docker",
			nodes: []*store.Node{{ID: "a", Runtimes: proc}, {ID: "b", Runtimes: proc}, {ID: "c", Runtimes: both}}, want: []string{"c"}},
		{name: "full here (by its own count): one under its capacity", self: "a", runtime: "process", here: 1,
			nodes: []*store.Node{{ID: "a", Runtimes: proc, Capacity: 1, Live: 0}, {ID: "b", Runtimes: proc, Capacity: 2, Live: 2}, {ID: "c", Runtimes: proc, Capacity: 3, Live: 1}},
			want:  []string{"c"}},
		{name: "cut off here: another", self: "a", runtime: "process", cutOff: true,
			nodes: []*store.Node{{ID: "a", Runtimes: proc}, {ID: "b", Runtimes: proc}}, want: []string{"b"}},
		{name: "never a node whose heartbeat stopped", self: "a", runtime: "docker", stale: []string{"b"},
			nodes: []*store.Node{{ID: "a", Runtimes: proc}, {ID: "b", Runtimes: both}, {ID: "c", Runtimes: both}}, want: []string{"c"}},
		{name: "never a drained node", self: "a", runtime: "docker",
			nodes: []*store.Node{{ID: "a", Runtimes: proc}, {ID: "b", Runtimes: both, Drained: true}, {ID: "c", Runtimes: both}}, want: []string{"c"}},
		{name: "no node can: none", self: "a", runtime: "docker", stale: []string{"c"},
			nodes: []*store.Node{{ID: "a", Runtimes: proc}, {ID: "b", Runtimes: both, Drained: true}, {ID: "c", Runtimes: both}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Many draws: the choice among others is random.
			for range 50 {
				m := placer(tt.self, tt.nodes, tt.stale...)
				if tt.cutOff {
					m.cluster.cutOff.Store(true)
				}
				for i := range tt.here {
					m.live[fmt.Sprint("bk_", i)] = &instance{}
				}
				got, err := m.place(tt.runtime, runsHere(tt.nodes, tt.self, tt.runtime))
				if len(tt.want) == 0 {
					if !errors.Is(err, errNoNode) {
						t.Fatalf("place = %q, %v; want errNoNode", got, err)
					}
					continue
				}
				if err != nil || got != tt.want[0] {
					t.Fatalf("place = %q, %v; want %v", got, err, tt.want)
				}
			}
		})
	}
}

// Between two nodes that qualify, the less loaded of two drawn at random:
// the busier one is chosen only when both draws fall on it, so about a
// quarter of the time, never most of it.
func TestManager_placePowerOfTwo(t *testing.T) {
	proc := []string{"process"}
	busy := 0
	const n = 400
	for range n {
		m := placer("a", []*store.Node{{ID: "a", Runtimes: proc, Drained: true},
			{ID: "idle", Runtimes: proc, Live: 0}, {ID: "busy", Runtimes: proc, Live: 50}})
		got, err := m.place("process", true)
		if err != nil {
			t.Fatal(err)
		}
		if got == "busy" {
			busy++
		}
	}
	if busy == 0 || busy > n/2 {
		t.Errorf("the busier node was chosen %d times of %d, want about a quarter", busy, n)
	}
}

// runsHere says whether node self, among nodes, runs runtime (what the
// Manager knows from its own runtimes).
func runsHere(nodes []*store.Node, self, runtime string) bool {
	for _, n := range nodes {
		if n.ID == self {
			return slices.Contains(n.Runtimes, runtime)
		}
	}
	return false
}
