"""Data ingestion: fMRI, genetics, cohort tables, subject-level splits, simulated cohorts, sample fetchers."""
