//! Reading order: rows top to bottom, left to right within a row.
//!
//! Lines whose vertical extents overlap by at least half the smaller height are on one row,
//! so a receipt's "TOTAL ..... 9.00" reads as one row even when the detector splits it.

use crate::vision::BBox;

/// Indices of `boxes` in reading order.
pub fn reading_order(boxes: &[BBox]) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..boxes.len()).collect();
    idx.sort_by(|&a, &b| {
        boxes[a].center()[1]
            .total_cmp(&boxes[b].center()[1])
            .then(boxes[a].x1.total_cmp(&boxes[b].x1))
    });
    let mut rows: Vec<Vec<usize>> = Vec::new();
    for i in idx {
        let b = &boxes[i];
        let same_row = rows.last().is_some_and(|row| {
            row.iter().any(|&j| {
                let o = &boxes[j];
                o.vertical_overlap(b) >= 0.5 * o.height().min(b.height()).max(1.0)
            })
        });
        match rows.last_mut() {
            Some(row) if same_row => row.push(i),
            _ => rows.push(vec![i]),
        }
    }
    rows.into_iter()
        .flat_map(|mut row| {
            row.sort_by(|&a, &b| boxes[a].x1.total_cmp(&boxes[b].x1));
            row
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_then_columns() {
        let boxes = [
            BBox::new(200.0, 12.0, 300.0, 30.0), // row 1, right (slightly lower)
            BBox::new(10.0, 10.0, 100.0, 28.0),  // row 1, left
            BBox::new(10.0, 50.0, 100.0, 70.0),  // row 2
        ];
        assert_eq!(reading_order(&boxes), vec![1, 0, 2]);
    }
}
