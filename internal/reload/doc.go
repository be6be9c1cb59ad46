// Package reload owns live reconfiguration: the [Reloader] builds the whole
// configuration again from its sources (internal/config's Load), rejects it as
// a whole when anything is invalid, and otherwise hands it to the components
// registered with it (pools, the proxy server, the logger, metrics; later the
// client auth file and TLS certificates) in two phases, prepare then apply, so
// that a component that cannot take the new configuration stops the reload
// before anything changed. Settings a running proxy cannot change are kept
// and reported. [Reloader.Watch] triggers a reload when a configuration file
// changes, watching directories so that Kubernetes' symlink swaps of mounted
// ConfigMaps and Secrets are seen.
//
// It imports internal/config and fsnotify only; the components are functions
// that cmd/proxy registers, so this package never imports the proxy, the pool
// or Prometheus.
package reload
