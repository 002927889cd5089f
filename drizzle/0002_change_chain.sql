DROP INDEX `stream_entries_document`;--> statement-breakpoint
DROP INDEX `stream_entries_src_seq`;--> statement-breakpoint
ALTER TABLE `stream_entries` ADD `prev_offset` integer;--> statement-breakpoint
ALTER TABLE `documents` ADD `last_offset` integer;