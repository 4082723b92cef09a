"""``hardneg strategies``: list the negative-sampling presets, or show one preset's options."""

from __future__ import annotations

import inspect
from typing import Any

import typer

from hardneg.cli.app import app


def check_option_types(name: str, options: dict[str, Any]) -> None:
    """Refuse, naming the option, a value that is not a number where the preset (or every strategy)
    takes a number: the strategy itself would only say that a string is not a float."""
    from hardneg.negatives.registry import PRESETS
    from hardneg.negatives.strategy import Strategy

    defaults = {k: p.default for k, p in inspect.signature(Strategy.__init__).parameters.items()}
    defaults.update(PRESETS[name].knobs())
    for key, value in options.items():
        d = defaults.get(key)
        numeric = isinstance(d, (int, float)) and not isinstance(d, bool)
        if numeric and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise ValueError(
                f"option {key!r} of preset {name!r} must be a number, got {value!r}"
            )


@app.command("strategies")
def strategies(
    name: str = typer.Argument(None, help="A preset name: show its options and defaults."),
    option: list[str] = typer.Option(
        None, "--option", "-o", help="KEY=VALUE (YAML value), repeatable: build the preset with it and show it."
    ),
    components: bool = typer.Option(
        False, "--components", help="Show the alias table: each preset's base, component kinds, classes and paper."
    ),
) -> None:
    """List strategy presets with one-line descriptions (usable in Python, YAML configs and here)."""
    from rich.console import Console
    from rich.table import Table

    from hardneg.negatives.registry import (
        PRESETS,
        create_strategy,
        describe_strategies,
        list_strategies,
        parse_overrides,
    )

    console = Console()
    if name is None and option:
        raise ValueError("--option needs a preset name: hardneg strategies NAME -o KEY=VALUE")
    if components:
        if name is not None or option:
            raise ValueError("--components lists every preset and kind: give it without a preset name or --option")
        _print_alias_table(console)
        return
    if name is None:
        table = Table(title="hardneg strategy presets", show_lines=False)
        table.add_column("name", style="bold")
        table.add_column("description")
        for n, d in describe_strategies().items():
            table.add_row(n, d)
        console.print(table)
        console.print(
            "Use one: create_strategy(NAME, **options) in Python, `strategy: {name: NAME, ...}` in YAML; "
            "`hardneg strategies NAME` shows a preset's options; `hardneg strategies --components` the "
            "component kinds and classes of each."
        )
        return
    if name not in PRESETS:
        raise ValueError(f"unknown strategy preset {name!r}; available: {', '.join(list_strategies())}")
    p = PRESETS[name]
    console.print(f"[bold]{name}[/bold]: {p.description}")
    knobs = p.knobs()
    if knobs:
        table = Table(title="preset options")
        table.add_column("option")
        table.add_column("default")
        for k, v in knobs.items():
            table.add_row(k, "required" if v is inspect.Parameter.empty else repr(v))
        console.print(table)
    if option:
        options = parse_overrides(option)
        check_option_types(name, options)
        strategy = create_strategy(name, **options)  # errors name the option
        console.print(f"built: {strategy!r}", markup=False, soft_wrap=True)
    console.print(
        "Strategy options (all presets): t, beta, tau_plus, clamp, detach_weights, reduction, positives, "
        "positive_reduce, n_neg, schedule, diagnostics, diagnostics_anchors, chunk_size; "
        "plus source / filters / weighting. Try: hardneg strategies NAME -o beta=2 -o 'filters=[{kind: id}]'"
    )


def _print_alias_table(console: Any) -> None:
    """The alias table of `hardneg.negatives.registry.alias_table`: preset → kind → class → paper."""
    from rich.table import Table

    from hardneg.negatives.registry import alias_table

    table = Table(title="presets, component kinds and classes")
    for column in ("preset", "base", "kind", "class", "kind also spelt", "paper"):
        table.add_column(column)
    for r in alias_table():
        table.add_row(r.preset or "—", r.base or "—", ", ".join(r.kinds), ", ".join(r.classes),
                      ", ".join(f"{a} = {k}" for a, k in r.kind_aliases) or "—", r.paper or "—")
    console.print(table)
    console.print("A preset is a name for create_strategy / `strategy: {name: …}`; a kind names one component "
                  "in `source:`, `filters:`, `weighting:` (`{kind: …}`); the class is its Python name.")
