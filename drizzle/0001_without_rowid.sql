-- Custom migration (drizzle-kit cannot express WITHOUT ROWID). The hot tables
-- are keyed by a composite primary key; as rowid tables each insert also
-- maintained a separate b-tree for that key. WITHOUT ROWID stores rows in
-- primary-key order instead: one b-tree fewer per write, and the stream's
-- entries sit in (collection, offset) order for replay reads.
CREATE TABLE `stream_entries_new` (
	`collection` text NOT NULL,
	`offset` integer NOT NULL,
	`document` text,
	`v` integer,
	`kind` text NOT NULL,
	`payload` text NOT NULL,
	`source` text NOT NULL,
	`src` text,
	`seq` integer,
	`created_at` integer NOT NULL,
	PRIMARY KEY(`collection`, `offset`)
) WITHOUT ROWID;
--> statement-breakpoint
INSERT INTO `stream_entries_new` SELECT `collection`, `offset`, `document`, `v`, `kind`, `payload`, `source`, `src`, `seq`, `created_at` FROM `stream_entries`;
--> statement-breakpoint
DROP TABLE `stream_entries`;
--> statement-breakpoint
ALTER TABLE `stream_entries_new` RENAME TO `stream_entries`;
--> statement-breakpoint
CREATE INDEX `stream_entries_document` ON `stream_entries` (`collection`,`document`,`offset`);
--> statement-breakpoint
CREATE INDEX `stream_entries_src_seq` ON `stream_entries` (`src`,`seq`) WHERE "stream_entries"."src" IS NOT NULL;
--> statement-breakpoint
CREATE INDEX `stream_entries_created` ON `stream_entries` (`created_at`);
--> statement-breakpoint
CREATE TABLE `documents_new` (
	`collection` text NOT NULL,
	`id` text NOT NULL,
	`v` integer NOT NULL,
	`type` text,
	`data` text,
	`deleted` integer DEFAULT false NOT NULL,
	`updated_at` integer NOT NULL,
	PRIMARY KEY(`collection`, `id`)
) WITHOUT ROWID;
--> statement-breakpoint
INSERT INTO `documents_new` SELECT `collection`, `id`, `v`, `type`, `data`, `deleted`, `updated_at` FROM `documents`;
--> statement-breakpoint
DROP TABLE `documents`;
--> statement-breakpoint
ALTER TABLE `documents_new` RENAME TO `documents`;
--> statement-breakpoint
CREATE TABLE `streams_new` (
	`collection` text PRIMARY KEY NOT NULL,
	`head` integer NOT NULL
) WITHOUT ROWID;
--> statement-breakpoint
INSERT INTO `streams_new` SELECT `collection`, `head` FROM `streams`;
--> statement-breakpoint
DROP TABLE `streams`;
--> statement-breakpoint
ALTER TABLE `streams_new` RENAME TO `streams`;
