"""The one way configuration files are rendered: jinja2, strict about missing
values, no HTML escaping, templates kept beside the code that renders them."""

from __future__ import annotations

import jinja2


def environment(package: str) -> jinja2.Environment:
    """Templates from `package`'s templates/ folder."""
    return jinja2.Environment(
        loader=jinja2.PackageLoader(package, "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
