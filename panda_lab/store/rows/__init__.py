"""Row-level repositories: functions that take a connection and open no transaction."""
