"""The netsiam dashboard: one panel list (:mod:`.panels`) rendered as Grafana JSON (:mod:`.grafana`) and,
through a small Prometheus client (:mod:`.prometheus`), as one picture (:mod:`.picture`)."""
