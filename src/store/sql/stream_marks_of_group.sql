-- stream_marks_of_group: how far a group has appended to each of its streams (read when the
-- relay takes the lease, to compare with the watermarks in Redis).
SELECT stream, mark, first_mark FROM outbox.stream_marks WHERE group_name = $1
