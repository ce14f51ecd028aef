"""What operators watch: Prometheus metrics, the status page and its JSON, structured logs."""
