// Package ui drives Berth's dashboard (/ui/) in a real Chromium against a
// real `berth serve`, built as it ships. It holds tests only; its small
// harness copies what it needs from package e2e rather than share test
// files across packages.
package ui
