"""The conversion table (one rule per source tensor), its rules, and planning from headers."""
