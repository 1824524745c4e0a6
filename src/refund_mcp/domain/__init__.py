"""Money, statuses, reasons and the error tree: the vocabulary every other module speaks."""
