"""Reports for QA: the export (CSV/JSON), the PDF report and the review export."""
