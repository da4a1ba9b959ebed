"""``imageworks compare``: the same images through several serving stacks and models, side by side.

Modules, one concept each: ``candidates`` (what is compared, from flags and
config), ``run`` (sending the prepared images through each candidate's
client), ``records`` (the results lines, written and read back), ``stats``
(numbers from the records), ``report`` (the self-contained HTML page and its
JSON twin), ``thumbs`` (its thumbnails), ``svg`` (the charts), ``style`` (the
page's CSS) and ``command`` (the CLI's flags).  Nothing heavy is imported here, so ``imageworks --help``
stays fast.
"""

from __future__ import annotations

__all__: list[str] = []
