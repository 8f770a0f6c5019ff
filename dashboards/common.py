"""Panel, variable and annotation helpers on top of grafana-foundation-sdk, so each dashboard reads as a list of
panels with their queries. Every panel's datasource is the ``$datasource`` variable (any Prometheus)."""

from __future__ import annotations

from typing import Any

from grafana_foundation_sdk.builders import bargauge, prometheus, table, timeseries
from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard as builders
from grafana_foundation_sdk.cog import builder as cogbuilder
from grafana_foundation_sdk.models import common as common_models
from grafana_foundation_sdk.models import dashboard as models
from grafana_foundation_sdk.models import prometheus as prometheus_models

from dashboards import promql

DATASOURCE = models.DataSourceRef(type_val="prometheus", uid="${datasource}")
TAG = "chatbench"
RATE_UNIT = "suffix:/s"

Query = prometheus.Dataquery


def q(expr: str, legend: str = "") -> Query:
    query = prometheus.Dataquery().expr(expr)
    return query.legend_format(legend) if legend else query


def _with_targets(panel: Any, queries: tuple[Query, ...]) -> Any:
    for i, query in enumerate(queries):
        panel.with_target(query.ref_id(chr(ord("A") + i)))
    return panel


def graph(title: str, description: str, unit: str, *queries: Query, span: int = 8, height: int = 8,
          soft_max: float | None = None) -> timeseries.Panel:
    """A time series panel; ``queries`` get refIds A, B, ... in order."""
    panel = (timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .span(span).height(height).fill_opacity(10).line_width(1)
             .legend(common_builders.VizLegendOptions().display_mode(common_models.LegendDisplayMode.TABLE)
                     .placement(common_models.LegendPlacement.BOTTOM).show_legend(True).calcs(["mean", "max"]))
             .tooltip(common_builders.VizTooltipOptions().mode(common_models.TooltipDisplayMode.MULTI)
                      .sort(common_models.SortOrder.DESCENDING)))
    if soft_max is not None:
        panel = panel.axis_soft_max(soft_max)
    result: timeseries.Panel = _with_targets(panel, queries)
    return result


def bars(title: str, description: str, unit: str, *queries: Query, span: int = 8, height: int = 8,
         decimals: float = 2) -> bargauge.Panel:
    """Horizontal bars of instant queries over the dashboard's time range (one bar per configuration)."""
    panel = (bargauge.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit)
             .decimals(decimals).span(span).height(height).min(0)
             .orientation(common_models.VizOrientation.HORIZONTAL)
             .display_mode(common_models.BarGaugeDisplayMode.BASIC)
             .reduce_options(common_builders.ReduceDataOptions().calcs(["lastNotNull"]).values(False)))
    result: bargauge.Panel = _with_targets(panel, tuple(query.instant() for query in queries))
    return result


def info_table(title: str, description: str, expr: str, *, span: int = 24, height: int = 5) -> table.Panel:
    """A table of an info series' labels (instant query, table format), hiding the time and value columns."""
    organize = models.DataTransformerConfig(
        id_val="organize", options={"excludeByName": {"Time": True, "Value": True, "__name__": True}})
    panel = (table.Panel().title(title).description(description).datasource(DATASOURCE).span(span).height(height)
             .with_transformation(organize))
    result: table.Panel = _with_targets(
        panel, (q(expr).instant().format(prometheus_models.PromQueryFormat.TABLE),))
    return result


def thresholds(*steps: tuple[float | None, str]) -> builders.ThresholdsConfig:
    return builders.ThresholdsConfig().mode(models.ThresholdsMode.ABSOLUTE).steps(
        [models.Threshold(value=v, color=c) for v, c in steps])


# -- variables


def _query_variable(name: str, label: str, query: str) -> builders.QueryVariable:
    return (builders.QueryVariable(name).label(label).datasource(DATASOURCE).query(query)
            .refresh(models.VariableRefresh.ON_TIME_RANGE_CHANGED).sort(models.VariableSort.ALPHABETICAL_ASC)
            .multi(True).include_all(True).all_value(".*")
            .current(models.VariableOption(selected=True, text="All", value="$__all")))


def variables(*, split: bool = False, profile: bool = False) -> list[cogbuilder.Builder[models.VariableModel]]:
    """Datasource, run id and the four modes (the modes offered are those of the selected runs)."""
    out: list[cogbuilder.Builder[models.VariableModel]] = [
        builders.DatasourceVariable("datasource").label("Prometheus").type("prometheus"),
        _query_variable("run_id", "run", 'label_values(chat_server_info{job="chat_server"}, run_id)'),
    ]
    out += [_query_variable(mode, mode, f'label_values(chat_server_info{{run_id=~"$run_id"}}, {mode})')
            for mode in promql.MODES]
    if profile:
        out.append(_query_variable(
            "profile", "network profile",
            'label_values(chatbench_delivery_latency_seconds_count{run_id=~"$run_id"}, profile)'))
    if split:
        out.append(builders.CustomVariable("split").label("split by").description(
            "which mode labels the comparison panels split by").values(",".join(promql.MODES))
            .multi(True).include_all(True)
            .current(models.VariableOption(selected=True, text="All", value="$__all")))
    return out


# -- annotations


class _PromAnnotationModel(models.AnnotationQuery):
    """A Prometheus annotation: the SDK's AnnotationQuery plus the Prometheus datasource's own fields."""

    def __init__(self, *, title_format: str, tag_keys: str, step: str, **kw: Any) -> None:
        super().__init__(**kw)
        self.title_format, self.tag_keys, self.step = title_format, tag_keys, step

    def to_json(self) -> dict[str, object]:
        payload = super().to_json()
        payload.update({"titleFormat": self.title_format, "tagKeys": self.tag_keys, "step": self.step,
                        "useValueForTime": False, "textFormat": ""})
        return payload


class PromAnnotation(cogbuilder.Builder[models.AnnotationQuery]):
    """Events where ``expr`` has samples (consecutive samples become one region), titled by ``title_format``."""

    def __init__(self, name: str, expr: str, *, color: str, title_format: str, tag_keys: str,
                 step: str = "1s") -> None:
        self._internal = _PromAnnotationModel(name=name, datasource=DATASOURCE, enable=True, hide=False,
                                              icon_color=color, expr=expr, title_format=title_format,
                                              tag_keys=tag_keys, step=step)

    def build(self) -> models.AnnotationQuery:
        return self._internal


def phase_annotation() -> PromAnnotation:
    """Scenario phases (ramp-up, steady, burst, storm, ...) from the generator's ``chatbench_phase`` gauge."""
    return PromAnnotation("scenario phases", 'chatbench_phase{run_id=~"$run_id"} == 1', color="blue",
                          title_format="{{phase}}", tag_keys="phase,run_id")


def restart_annotation() -> PromAnnotation:
    """A gateway that restarted on the same address (its process start time changed)."""
    return PromAnnotation(
        "gateway restarts",
        f"changes(process_start_time_seconds{{{promql.SERVER}}}[5s]) > 0",
        color="red", title_format="restart {{instance}}", tag_keys="instance,run_id")


# -- the dashboard


def dashboard(uid: str, title: str, description: str, *, split: bool = False, profile: bool = False,
              annotations: tuple[PromAnnotation, ...] = ()) -> builders.Dashboard:
    board = (builders.Dashboard(title).uid(uid).description(description).tags([TAG]).editable()
             .tooltip(models.DashboardCursorSync.CROSSHAIR).time("now-30m", "now").refresh("10s")
             .timezone("browser").variables(variables(split=split, profile=profile))
             .link(builders.DashboardLink("chatbench").type(models.DashboardLinkType.DASHBOARDS).tags([TAG])
                   .as_dropdown(True).include_vars(True).keep_time(True)))
    for annotation in (phase_annotation(), *annotations):
        board = board.annotation(annotation)
    return board


def row(title: str) -> builders.Row:
    return builders.Row(title)


def number_panels(board: models.Dashboard) -> models.Dashboard:
    """Stable panel ids 1..n in layout order (Grafana needs unique ids; links and annotations refer to them)."""
    for i, panel in enumerate(board.panels or [], start=1):
        panel.id_val = i
    return board
