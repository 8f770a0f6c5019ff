"""PromQL building blocks shared by every dashboard: selectors, the configuration join, quantiles, ratios.

The server's configuration is one info series per gateway, ``chat_server_info{fanout,storage,unread,offline,
version} 1``; a series is filtered and labelled by mode by multiplying it with that info series (value 1), never
by carrying the modes as labels on every series. Runs are told apart by ``run_id``, a target label set in the
Prometheus config (``chatbench run --prometheus`` sets it; dashboards/prometheus.yml shows how).

Grafana variables used here: ``$run_id``, ``$fanout``, ``$storage``, ``$unread``, ``$offline`` (regexes, All =
``.*``), ``$profile`` (weak network), ``${split:csv}`` (which mode labels to split by), ``$__rate_interval`` and
``$__range``.
"""

from __future__ import annotations

#: the Prometheus job names of the scrape targets (dashboards query by them; chatbench run --prometheus and
#: dashboards/prometheus.yml name their jobs so)
SERVER_JOB = "chat_server"  # each server process's admin port (/metrics)
SWARM_JOB = "chatbench_swarm"  # the Locust master's --metrics-port

MODES = ("fanout", "storage", "unread", "offline")
MODE_LABELS = ", ".join(MODES)
# one legend for a configuration; labels a split leaves out render empty
CONFIG_LEGEND = "{{fanout}} {{storage}} {{unread}} {{offline}}"

# label matchers (without braces) for the server's and the generator's series
SERVER = f'job="{SERVER_JOB}", run_id=~"$run_id"'
GENERATOR = 'run_id=~"$run_id"'
INFO = ('chat_server_info{job="' + SERVER_JOB + '", run_id=~"$run_id", fanout=~"$fanout", storage=~"$storage", '
        'unread=~"$unread", offline=~"$offline"}')
RATE = "[$__rate_interval]"
RANGE = "[$__range]"


def info(over_range: bool = False) -> str:
    """The configuration series; over the dashboard's range for instant queries (a finished run's info is stale)."""
    return f"last_over_time({INFO}{RANGE})" if over_range else INFO


def server(expr: str, *, over_range: bool = False) -> str:
    """A server series (one per gateway) kept only where the gateway's configuration matches, with its modes added."""
    return f"({expr}) * on (job, instance, run_id) group_left ({MODE_LABELS}) {info(over_range)}"


def generator(expr: str, *, over_range: bool = False) -> str:
    """A generator series, with the modes of the servers of the same run (one configuration per run)."""
    return (f"({expr}) * on (run_id) group_left ({MODE_LABELS}) "
            f"group by (run_id, {MODE_LABELS}) ({info(over_range)})")


def server_rate(metric: str, by: str, matchers: str = "") -> str:
    """Per-second rate of a server counter, summed by ``by``."""
    sel = f"{metric}{{{SERVER}{', ' + matchers if matchers else ''}}}"
    return f"sum by ({by}) ({server(f'rate({sel}{RATE})')})"


def generator_rate(metric: str, by: str, matchers: str = "") -> str:
    sel = f"{metric}{{{GENERATOR}{', ' + matchers if matchers else ''}}}"
    return f"sum by ({by}) ({generator(f'rate({sel}{RATE})')})"


def server_gauge(metric: str, by: str, agg: str = "sum") -> str:
    return f"{agg} by ({by}) ({server(f'{metric}{{{SERVER}}}')})"


def generator_gauge(metric: str, by: str, matchers: str = "", agg: str = "max") -> str:
    sel = f"{metric}{{{GENERATOR}{', ' + matchers if matchers else ''}}}"
    return f"{agg} by ({by}) ({generator(sel)})"


def server_quantile(q: float, histogram: str, by: str) -> str:
    """Quantile of a server histogram (``histogram`` without ``_bucket``), buckets merged across gateways."""
    return f"histogram_quantile({q}, sum by (le, {by}) ({server(f'rate({histogram}_bucket{{{SERVER}}}{RATE})')}))"


def generator_quantile(q: float, histogram: str, by: str, matchers: str = "") -> str:
    sel = f"{histogram}_bucket{{{GENERATOR}{', ' + matchers if matchers else ''}}}"
    return f"histogram_quantile({q}, sum by (le, {by}) ({generator(f'rate({sel}{RATE})')}))"


def server_increase(metric: str, by: str, matchers: str = "") -> str:
    """Increase of a server counter over the dashboard's time range, summed by ``by`` (for instant queries)."""
    sel = f"{metric}{{{SERVER}{', ' + matchers if matchers else ''}}}"
    return f"sum by ({by}) ({server(f'increase({sel}{RANGE})', over_range=True)})"


def per_message(metric: str, by: str, *, per: str = "chat_messages_accepted_total", scale: float = 1,
                extra_by: str = "") -> str:
    """Cost ratio over the range: increase(metric) / increase(per), by configuration (``extra_by``: also split the
    numerator, e.g. by ``kind``)."""
    num = server_increase(metric, f"{by}, {extra_by}" if extra_by else by)
    den = server_increase(per, by)
    scaled = f"{scale:g} * " if scale != 1 else ""
    if extra_by:
        return f"{scaled}{num} / ignoring ({extra_by}) group_left {den}"
    return f"{scaled}{num} / {den}"
