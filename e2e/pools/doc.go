// Package pools tests warm pools end to end: a real `berth serve` (built
// by internal/testbin) with the process runtime, and the test backend,
// which handles claims through the sdk. Pools filled and refilled, claims
// that give a key's state to a backend started before the key was known,
// a backend that fails its claim, a killed pooled backend, and a Berth
// restart that re-adopts its pool. It needs nothing but Linux.
package pools
