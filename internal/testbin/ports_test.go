package testbin

import (
	"net"
	"os"
	"strconv"
	"strings"
	"testing"

	"github.com/berthhq/berth/runtime/process"
)

// The ports FreeAddr gives are outside the kernel's ephemeral range and
// the process runtime's backend range, where other processes take ports
// without asking.
func TestFreeAddr_OutsideBusyRanges(t *testing.T) {
	bLo, bHi := process.PortRange()
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		t.Skipf("no ephemeral range to read: %v", err)
	}
	f := strings.Fields(string(b))
	eLo, _ := strconv.Atoi(f[0])
	eHi, _ := strconv.Atoi(f[1])
	for range 200 {
		_, p, _ := net.SplitHostPort(FreeAddr(t))
		port, _ := strconv.Atoi(p)
		if port >= bLo && port <= bHi || port >= eLo && port <= eHi {
			t.Fatalf("FreeAddr gave port %d: inside the backend range [%d, %d] or the ephemeral range [%d, %d]", port, bLo, bHi, eLo, eHi)
		}
	}
}
