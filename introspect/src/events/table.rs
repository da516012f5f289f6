//! The per-source summary printed at exit.

use std::fmt::Write;

use super::Sources;

/// The per-source table: source, how, hits, nmissed, lost (text left-aligned, counts
/// right-aligned), then a totals row.
///
/// ```text
/// source              how            hits  nmissed  lost
/// probe start_kernel  int3              1        0     0
/// watch jiffies_64    watch w 8 slot 1  7        0     2
/// total                                 8        0     2
/// ```
pub fn summary_table(sources: &Sources) -> String {
    let rows: Vec<[String; 5]> = sources
        .iter()
        .map(|(_, s)| {
            [
                s.name().to_owned(),
                s.how().to_owned(),
                s.hits().to_string(),
                s.nmissed().to_string(),
                s.lost().to_string(),
            ]
        })
        .collect();
    let total = |column: fn(&super::Source) -> u64| -> String {
        sources
            .iter()
            .map(|(_, s)| column(s))
            .sum::<u64>()
            .to_string()
    };
    let header = ["source", "how", "hits", "nmissed", "lost"].map(str::to_owned);
    let totals = [
        "total".to_owned(),
        String::new(),
        total(super::Source::hits),
        total(super::Source::nmissed),
        total(super::Source::lost),
    ];

    let mut widths = [0; 5];
    for row in std::iter::once(&header).chain(&rows).chain([&totals]) {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }

    let mut table = String::new();
    for row in std::iter::once(&header).chain(&rows).chain([&totals]) {
        let [source, how, hits, nmissed, lost] = row;
        let [w0, w1, w2, w3, w4] = widths;
        // Writing to a String cannot fail.
        let _ = writeln!(
            table,
            "{source:<w0$}  {how:<w1$}  {hits:>w2$}  {nmissed:>w3$}  {lost:>w4$}"
        );
    }
    table
}
