"""``/admin/experiments/*``: A/B experiments — their config, traffic, analysis, export and status changes.

    GET  /admin/experiments                       every experiment: config, whether it takes traffic now,
                                                  requests per variant (from the history)
    GET  /admin/experiments/{name}                one of them
    GET  /admin/experiments/{name}/analysis       the report (analysis/experiment.py): metrics, comparisons,
                                                  verdict; + since, until (ISO 8601, Unix seconds or an age)
    GET  /admin/experiments/{name}/export         + format=json|csv: the report, or its comparisons as CSV
    POST /admin/experiments/{name}/start|pause|stop
                                                  set `status` in experiments.yaml (config/edit.py), then
                                                  reload; 409 when the config is not from files

Master key only (``admit_admin``); the Host/Origin checks of every route apply.
The analysis runs in a worker thread (numpy/scipy: the ``experiments`` extra).
"""

from __future__ import annotations

import asyncio
import csv
import io
import logging
import time
from typing import Any
from urllib.parse import parse_qs

import orjson

from labgate.auth import admit_admin
from labgate.config.problems import ConfigError
from labgate.config.reload import Reloader
from labgate.config.schema.experiments import ExperimentConfig
from labgate.errors import (
    ConfigInvalidError,
    HistoryUnavailableError,
    LabgateError,
    RecordNotFoundError,
    ReloadUnavailableError,
    RequestError,
)
from labgate.gateway import Gateway
from labgate.server.envelopes import JSON, openai_error
from labgate.server.http import Handler, Request, Response
from labgate.server.ids import request_id
from labgate.store.base import Store
from labgate.store.query import parse_time
from labgate.store.schema import TABLE

log = logging.getLogger("labgate.server")
PREFIX = "/admin/experiments"
ACTIONS = {"start": "running", "pause": "paused", "stop": "stopped"}
CSV_COLUMNS = ("metric", "variant", "control", "kind", "n_control", "n_variant", "value_control", "value_variant",
               "difference", "cs_low", "cs_high", "p_always_valid", "ci_low", "ci_high", "p_fixed", "power",
               "needed_per_variant", "decided", "verdict")


def experiment_routes(gateway: Gateway, reloader: Reloader | None) -> tuple[dict[str, dict[str, Handler]],
                                                                            dict[str, dict[str, Handler]]]:
    """``(exact routes, prefix routes)`` for ``server/app.py``'s table."""
    surface = ExperimentSurface(gateway, reloader)
    return {PREFIX: {"GET": surface.list}}, {PREFIX + "/": {"GET": surface.show, "POST": surface.act}}


def report_csv(report: dict[str, Any]) -> bytes:
    """The report's comparisons, one row per (variant, metric)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for c in report["comparisons"]:
        writer.writerow([c["metric"], c["variant"], c["control"], c["kind"], *c["n"], *c["values"], c["difference"],
                         *c["confidence_sequence"], c["p_always_valid"], *c["fixed_interval"], c["p_fixed"],
                         c["power"], c["needed_per_variant"], c["decided"], c["verdict"]])
    return out.getvalue().encode()


async def variant_counts(store: Store) -> dict[str, dict[str, int]]:
    """Requests per experiment and variant in the history."""
    rows = await store.fetch(f"SELECT experiment, variant, count(*) AS requests FROM {TABLE} "
                             f"WHERE experiment IS NOT NULL GROUP BY experiment, variant")
    out: dict[str, dict[str, int]] = {}
    for row in rows:
        out.setdefault(row["experiment"], {})[row["variant"] or ""] = int(row["requests"])
    return out


async def analyze(store: Store, config: ExperimentConfig, *, since: float | None = None,
                  until: float | None = None) -> dict[str, Any]:
    """The experiment's report from the history (the statistics run in a worker thread)."""
    from labgate.analysis.experiment import analyze as report
    from labgate.analysis.experiment import observations

    observed, truncated = await observations(store, config.name, since=since, until=until)
    return await asyncio.to_thread(report, config, observed, truncated=truncated)


class ExperimentSurface:
    def __init__(self, gateway: Gateway, reloader: Reloader | None) -> None:
        self.gateway = gateway
        self.reloader = reloader

    async def list(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            admit_admin(self.gateway.runtime.auth, request.headers, request.client)
            counts = await self._counts()
            data = [self._describe(e, counts) for e in self.gateway.runtime.config.experiments.experiments]
            return _json({"data": data}, rid)
        except Exception as exc:
            return _error(exc, rid, request.path)

    async def show(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            admit_admin(self.gateway.runtime.auth, request.headers, request.client)
            name, _, what = request.path[len(PREFIX) + 1:].partition("/")
            config = self._find(name)
            if what == "":
                return _json(self._describe(config, await self._counts()), rid)
            if what not in ("analysis", "export"):
                raise RecordNotFoundError(f"No route for GET {request.path}; use {PREFIX}/{name}, …/analysis "
                                          "or …/export.")
            params = {k: v[-1] for k, v in parse_qs(request.query).items()}
            fmt = params.get("format", "json")
            if what == "export" and fmt not in ("json", "csv"):
                raise RequestError(f"format must be json or csv; got {fmt[:20]!r}.", param="format")
            since, until = (parse_time(params[k]) if k in params else None for k in ("since", "until"))
            found = await analyze(self._store(), config, since=since, until=until)
            if what == "export" and fmt == "csv":
                return Response(200, [("content-type", "text/csv; charset=utf-8"), ("x-request-id", rid),
                                      ("content-disposition", f'attachment; filename="{name}.csv"')],
                                report_csv(found))
            return _json(found, rid)
        except Exception as exc:
            return _error(exc, rid, request.path)

    async def act(self, request: Request) -> Response:
        rid = request_id(request.headers)
        try:
            admit_admin(self.gateway.runtime.auth, request.headers, request.client)
            name, _, action = request.path[len(PREFIX) + 1:].partition("/")
            if action not in ACTIONS:
                raise RecordNotFoundError(f"No route for POST {request.path}; use …/start, …/pause or …/stop.")
            self._find(name)
            path = None if self.reloader is None else self.reloader.source.path
            if path is None:
                raise ReloadUnavailableError("This gateway's config was not loaded from files: change "
                                             "experiments.yaml and restart it.")
            from labgate.config.edit import set_status

            before = await asyncio.to_thread(set_status, path, name, ACTIONS[action])
            assert self.reloader is not None
            result = await self.reloader.reload(trigger="experiment")
            return _json({"experiment": name, "status": ACTIONS[action], "was": before,
                          "reload": result.as_dict()}, rid)
        except ConfigError as exc:
            return openai_error(ConfigInvalidError(f"experiments.yaml was not changed: {exc}"), rid)
        except Exception as exc:
            return _error(exc, rid, request.path)

    def _find(self, name: str) -> ExperimentConfig:
        for experiment in self.gateway.runtime.config.experiments.experiments:
            if experiment.name == name:
                return experiment
        raise RecordNotFoundError(f"No experiment named {name[:80]!r} in experiments.yaml.")

    def _store(self) -> Store:
        if self.gateway.history is None:
            raise HistoryUnavailableError("Request history is off (store.capture: none): experiments are "
                                          "analysed from it.")
        return self.gateway.history.store

    async def _counts(self) -> dict[str, dict[str, int]]:
        return {} if self.gateway.history is None else await variant_counts(self.gateway.history.store)

    def _describe(self, config: ExperimentConfig, counts: dict[str, dict[str, int]]) -> dict[str, Any]:
        running = self.gateway.runtime.experiments
        live = running is not None and any(e.name == config.name and e.active(time.time())
                                           for e in running.experiments)
        return {**config.model_dump(mode="json"), "taking_traffic": live, "control": config.control_name,
                "requests": counts.get(config.name, {})}


def _json(data: Any, rid: str, status: int = 200) -> Response:
    return Response(status, [JSON, ("x-request-id", rid), ("cache-control", "no-store")],
                    orjson.dumps(data, option=orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY))


def _error(exc: Exception, rid: str, path: str) -> Response:
    if isinstance(exc, LabgateError):
        return openai_error(exc, rid)
    if isinstance(exc, ValueError):
        return openai_error(RequestError(str(exc)), rid)
    log.exception("experiments: %s failed (request %s)", path, rid)
    return openai_error(HistoryUnavailableError("The experiment could not be read; it has been logged."), rid)
