"""What the terminal, Markdown and HTML outputs show, formatted in one place: numbers, method names and tables
(``format``), the notes under a table (``notes``), the Markdown and HTML reports of run directories, and the
tables of a sweep and a robustness report."""
