// Package fleet owns the fleet-wide connection budget (docs/design.md section
// 18): the sidecars of one Deployment share at most N server connections per
// route, with no coordinator to run, through PostgreSQL itself. Each sidecar
// keeps one coordination connection per route and holds on it one session
// advisory lock per server connection it may open, pg_try_advisory_lock(key,
// slot) with slot in [0, N): while PostgreSQL holds those locks the fleet
// cannot open more than N. A Share is one route's part of the budget in one
// sidecar, and is the pool.Budget of that route's pool.
//
// A sidecar below its floor holds a shared "hunger" lock (key, -1); the
// others count those at their once-a-second check and, while any is held,
// those above their own floor take no slot and give one up.
//
// It imports pgconn (the coordination connection), internal/pool (for the
// Budget and BudgetUser interfaces it works with) and the standard library;
// never the proxy, the metrics or Prometheus: metrics read Share.Stats at
// scrape time.
package fleet
