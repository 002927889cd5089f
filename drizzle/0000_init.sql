CREATE TABLE `documents` (
	`collection` text NOT NULL,
	`id` text NOT NULL,
	`v` integer NOT NULL,
	`type` text,
	`data` text,
	`deleted` integer DEFAULT false NOT NULL,
	`updated_at` integer NOT NULL,
	PRIMARY KEY(`collection`, `id`)
);
--> statement-breakpoint
CREATE TABLE `meta` (
	`key` text PRIMARY KEY NOT NULL,
	`value` text NOT NULL
);
--> statement-breakpoint
CREATE TABLE `stream_entries` (
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
);
--> statement-breakpoint
CREATE INDEX `stream_entries_document` ON `stream_entries` (`collection`,`document`,`offset`);--> statement-breakpoint
CREATE INDEX `stream_entries_src_seq` ON `stream_entries` (`src`,`seq`) WHERE "stream_entries"."src" IS NOT NULL;--> statement-breakpoint
CREATE INDEX `stream_entries_created` ON `stream_entries` (`created_at`);--> statement-breakpoint
CREATE TABLE `streams` (
	`collection` text PRIMARY KEY NOT NULL,
	`head` integer NOT NULL
);
