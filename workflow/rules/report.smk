# The report's tables: each table CSV (versioned, read by DVC) also as an HTML page, which the
# Snakemake report shows when its eye icon is clicked (its viewer renders HTML, images and PDF; a CSV
# would only be a download link). Pages are written on the submit host and not versioned.

from densepred.tables import write_html_table


for _page, _csv in TABLE_PAGES.items():

    rule:
        name:
            f"html_{Path(_csv).stem}"
        input:
            _csv,
        output:
            report(_page, caption=f"../report/{Path(_csv).stem}.rst", category="Tables"),
        localrule: True
        run:
            write_html_table(input[0], output[0])
