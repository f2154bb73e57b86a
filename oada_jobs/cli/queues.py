"""``oada-jobs queues``: the other OADA stores a service takes jobs from.

A service watches ``/bookmarks/services/<name>/queues`` on its own store; each
entry ``{"domain": ..., "token": ...}`` there makes it also work the job list
of that store, at once and without a restart (see docs/queues.md). Tokens are
never printed.

Owns this command only. May use the framework and ``cli/_common``; nothing
but the ``cli`` package may import it.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from typing import Annotated, Any

import typer
from rich.table import Table

from ..client import OADAClient, parse_domain
from ..exceptions import InvalidKey, InvalidQueueEntry, NotFound
from ..queue_list import parse_queue_entry
from ..tree import QUEUE_TYPE, get_layout, path_segment, resource_path
from ._common import (
    CLIError,
    ExitCode,
    JsonOption,
    ServiceOption,
    command,
    connect,
    out_console,
    print_json,
    resolve_service,
    run_command,
    settings_from,
)

queues_app = typer.Typer(
    name="queues",
    help="List, add and remove the OADA stores a service takes jobs from.",
    no_args_is_help=True,
)

# ``queues add`` uses --token for the queue's token, so the store to write to
# is named with --oada-domain/--oada-token on every queues command.
StoreDomainOption = Annotated[
    str | None,
    typer.Option(
        "--oada-domain",
        help="The service's own OADA server, holding its queues list. \\[env: OADA_DOMAIN]",
        show_default=False,
        rich_help_panel="Connection",
    ),
]
StoreTokenOption = Annotated[
    str | None,
    typer.Option(
        "--oada-token",
        help="Token for that server. \\[env: OADA_TOKEN]",
        show_default=False,
        rich_help_panel="Connection",
    ),
]

#: Any layout's tree describes ``queues`` the same way.
_TREE = get_layout("classic").tree


def _queues_path(service: str) -> str:
    return get_layout("classic").queues_path(service)


async def _read_entry(oada: OADAClient, value: object) -> object:
    # An entry may be a link to a resource holding {domain, token}.
    if isinstance(value, Mapping) and "_id" in value and "domain" not in value:
        try:
            return (await oada.get(resource_path(value["_id"]))).data
        except (NotFound, InvalidKey):
            return None
    return value


async def _listing(oada: OADAClient, service: str) -> list[dict[str, Any]]:
    try:
        data = (await oada.get(_queues_path(service))).data
    except NotFound:
        return []
    if not isinstance(data, Mapping):
        raise CLIError(f"the queues list of {service} is not an object; fix it in OADA")
    rows = []
    for key in sorted(data):
        if key.startswith("_"):
            continue
        value = await _read_entry(oada, data[key])
        try:
            entry = parse_queue_entry(key, value)
            rows.append({"id": key, "domain": entry.domain, "token": "***", "valid": True})
        except InvalidQueueEntry as error:
            domain = value.get("domain") if isinstance(value, Mapping) else None
            rows.append(
                {
                    "id": key,
                    "domain": domain if isinstance(domain, str) else None,
                    "token": "***" if isinstance(value, Mapping) and "token" in value else None,
                    "valid": False,
                    "problem": str(error),
                }
            )
    return rows


@command(queues_app, "list")
def list_queues(
    service: ServiceOption = None,
    json: JsonOption = False,
    oada_domain: StoreDomainOption = None,
    oada_token: StoreTokenOption = None,
) -> None:
    """List the extra stores the service takes jobs from (tokens are never shown).

    The service always works its own store's job list too; that one is not listed.
    """
    settings = settings_from(domain=oada_domain, token=oada_token, service=service)
    name = resolve_service(settings, service)

    async def main() -> None:
        async with connect(settings) as oada:
            rows = await _listing(oada, name)
        if json:
            print_json({"service": name, "queues": rows}, plain=True)
            return
        if not rows:
            out_console.print(
                f"{name} has no extra queues; it only works its own store. "
                "Add one with: oada-jobs queues add DOMAIN --token TOKEN"
            )
            return
        table = Table(title=f"queues of {name}")
        # Ids whole on one line, so they can be copied into `queues remove`.
        table.add_column("id", no_wrap=True)
        for column in ("domain", "token", "state"):
            table.add_column(column, overflow="fold")
        for row in rows:
            state = "[green]ok[/]" if row["valid"] else f"[red]ignored: {row.get('problem')}"
            table.add_row(row["id"], row["domain"] or "", row["token"] or "missing", state)
        out_console.print(table)

    run_command(main)


def _read_token() -> str:
    """The queue's token from a hidden prompt, or the first line of a piped stdin."""
    if not sys.stdin.isatty():
        # `echo "$TOKEN" | oada-jobs queues add ...`: a prompt would warn that
        # it cannot hide what nobody types.
        return sys.stdin.readline().strip()
    # On stderr, so --json output stays clean.
    return str(typer.prompt("Token for that server", hide_input=True, err=True))


@command(queues_app, "add")
def add_queue(
    domain: Annotated[
        str, typer.Argument(help="The OADA server to take jobs from, e.g. https://other.org.")
    ],
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            "-t",
            show_default=False,
            help="Token the service uses on DOMAIN (asked for when not given, or read "
            "from piped stdin, so it stays out of your shell history). "
            "\\[env: OADA_QUEUE_TOKEN]",
            envvar="OADA_QUEUE_TOKEN",
            show_envvar=False,
        ),
    ] = None,
    service: ServiceOption = None,
    json: JsonOption = False,
    oada_domain: StoreDomainOption = None,
    oada_token: StoreTokenOption = None,
) -> None:
    """Make the service also take jobs from DOMAIN, using --token there.

    The running service picks the new queue up at once.
    """
    settings = settings_from(domain=oada_domain, token=oada_token, service=service)
    name = resolve_service(settings, service)
    if token is None:
        token = _read_token()
    try:
        normalised = parse_domain(domain).http
    except ValueError as error:
        raise CLIError(f"bad DOMAIN: {error}", ExitCode.USAGE) from None
    try:
        parse_queue_entry("new", {"domain": normalised, "token": token})
    except InvalidQueueEntry as error:
        raise CLIError(f"bad queue: {error}", ExitCode.USAGE) from None

    async def main() -> None:
        async with connect(settings) as oada:
            path = _queues_path(name)
            await oada.ensure(path, {}, tree=_TREE)
            response = await oada.post(
                path, {"domain": normalised, "token": token.strip()}, content_type=QUEUE_TYPE
            )
        location = response.content_location or ""
        queue_id = location.rstrip("/").rsplit("/", 1)[-1]
        if json:
            print_json({"service": name, "id": queue_id, "domain": normalised}, plain=True)
        else:
            out_console.print(f"added queue [bold]{queue_id}[/] for {name}: {normalised}")
            out_console.print(f"  remove it with:  oada-jobs queues remove {queue_id} -s {name}")

    run_command(main)


@command(queues_app, "remove")
def remove_queue(
    queue_id: Annotated[str, typer.Argument(metavar="ID", help="The id from `queues list`.")],
    service: ServiceOption = None,
    json: JsonOption = False,
    oada_domain: StoreDomainOption = None,
    oada_token: StoreTokenOption = None,
) -> None:
    """Stop the service taking jobs from queue ID; its running jobs finish."""
    settings = settings_from(domain=oada_domain, token=oada_token, service=service)
    name = resolve_service(settings, service)
    cleaned = queue_id.strip()
    try:
        segment = path_segment(cleaned)
    except InvalidKey:
        segment = ""
    if not segment or cleaned.startswith("_"):
        raise CLIError(
            f"expected a queue id from `oada-jobs queues list`, got {queue_id!r}", ExitCode.USAGE
        )

    async def main() -> None:
        async with connect(settings) as oada:
            path = _queues_path(name)
            try:
                data = (await oada.get(path)).data
            except NotFound:
                data = {}
            if not isinstance(data, Mapping) or cleaned not in data:
                raise CLIError(
                    f"{name} has no queue {cleaned!r}; `oada-jobs queues list -s {name}` "
                    "shows the ids"
                )
            await oada.delete(f"{path}/{segment}")
        if json:
            print_json({"service": name, "id": cleaned, "removed": True}, plain=True)
        else:
            out_console.print(f"removed queue {cleaned} from {name}")

    run_command(main)


__all__ = ["queues_app"]
