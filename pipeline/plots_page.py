"""The HTML page that `dvc plots show` fills (`.dvc/config`: plots.html_template), with Vega,
Vega-Lite and vega-embed inlined from the bundle that vl-convert-python carries: the charts draw
with no network. DVC's own page loads them from a CDN.

    python -m pipeline.plots_page      # `make plots` runs it when the page is missing

The page is committed, so `dvc plots show` draws offline in any checkout, however its environment
was installed; tests/test_plots.py checks it is what this module writes.
"""

from __future__ import annotations

from pathlib import Path

import vl_convert

from pipeline.files import atomic_write

PAGE = Path(".dvc/plots/offline.html")  # committed
VEGA_LITE_VERSION = "v5.21"  # DVC's templates are Vega-Lite 5 specifications

# `{plot_divs}` is where DVC puts the charts; each calls the global `vegaEmbed` the bundle defines.
# The bundle runs in a function of its own, so its top-level names stay out of the page's.
HTML = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {{refresh_tag}}
    <title>DVC plots</title>
    <script type="text/javascript">(function () {{
{bundle}
}})();</script>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def write_page(path: Path = PAGE) -> Path:
    bundle = vl_convert.javascript_bundle(None, vl_version=VEGA_LITE_VERSION)
    with atomic_write(path, "w") as f:
        f.write(HTML.format(bundle=bundle))
    return path


if __name__ == "__main__":
    print(f"wrote {write_page()}: Vega, Vega-Lite and vega-embed inline, for `dvc plots show` offline")
