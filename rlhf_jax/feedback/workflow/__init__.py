"""The campaign workflow: streaming aggregation, task planning, label audits."""
