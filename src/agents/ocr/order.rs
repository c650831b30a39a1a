//! Reading order: rows top to bottom, left to right within a row.
//!
//! Lines whose vertical extents overlap by at least half the smaller height are on one row,
//! so a receipt's "TOTAL ..... 9.00" reads as one row even when the detector splits it. The
//! extents are the text's own, along its slope ([`Quad::same_row`]): a receipt photographed
//! at a slant has line boxes that overlap the next row's, and rows built from the boxes
//! interleaved an address's lines.

use crate::vision::Quad;

/// Indices of `quads` in reading order.
pub fn reading_order(quads: &[Quad]) -> Vec<usize> {
    let centre_y = |q: &Quad| q.0.iter().map(|p| p[1]).sum::<f32>() / 4.0;
    let left = |q: &Quad| q.bbox().x1;
    let mut idx: Vec<usize> = (0..quads.len()).collect();
    idx.sort_by(|&a, &b| {
        centre_y(&quads[a])
            .total_cmp(&centre_y(&quads[b]))
            .then(left(&quads[a]).total_cmp(&left(&quads[b])))
    });
    let mut rows: Vec<Vec<usize>> = Vec::new();
    for i in idx {
        let same_row = rows
            .last()
            .is_some_and(|row| row.iter().any(|&j| quads[j].same_row(&quads[i])));
        match rows.last_mut() {
            Some(row) if same_row => row.push(i),
            _ => rows.push(vec![i]),
        }
    }
    rows.into_iter()
        .flat_map(|mut row| {
            row.sort_by(|&a, &b| left(&quads[a]).total_cmp(&left(&quads[b])));
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vision::BBox;

    #[test]
    fn rows_then_columns() {
        let boxes = [
            BBox::new(200.0, 12.0, 300.0, 30.0), // row 1, right (slightly lower)
            BBox::new(10.0, 10.0, 100.0, 28.0),  // row 1, left
            BBox::new(10.0, 50.0, 100.0, 70.0),  // row 2
        ];
        let quads: Vec<Quad> = boxes.iter().map(Quad::from_bbox).collect();
        assert_eq!(reading_order(&quads), vec![1, 0, 2]);
    }

    #[test]
    fn slanted_lines_keep_their_order() {
        // Receipt 017 of SROIE, photographed at a slant: the boxes of "BANDAR BUKIT RAJA,
        // 41050" and of the wider line under it overlap by most of their height, and rows
        // built from the boxes read the lower line first (it starts further left).
        let upper = Quad([
            [202.0, 392.0],
            [614.0, 370.0],
            [616.0, 411.0],
            [204.0, 433.0],
        ]);
        let lower = Quad([
            [168.0, 424.0],
            [645.0, 399.0],
            [648.0, 444.0],
            [170.0, 469.0],
        ]);
        assert!(upper.bbox().vertical_overlap(&lower.bbox()) > 0.5 * upper.bbox().height());
        assert_eq!(reading_order(&[lower, upper]), vec![1, 0]);
    }
}
