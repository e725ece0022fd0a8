"""The monitor: what a cage tells about itself, and the cage that watches the others.

    stats.py       request and resource statistics, taken once, in the lifecycle
    status.py      the whole picture of a running cage: statistics and gauges, for every page
    prometheus.py  /metrics in the Prometheus text format (prometheus-client)
    page.py        /performance and /notifications: HTML with SVG charts, drawn here
    notify.py      pmnc.notify.info/warning/error/alert: kept, shown, forwarded to health_monitor
    health.py      the health_monitor cage's probes of every other cage, and its cluster page

The `performance` interface (protocols/performance.py) serves the pages.
"""
