CREATE TABLE `intake_applied` (
	`stream` text NOT NULL,
	`entry_id` text NOT NULL,
	`applied_at` integer NOT NULL,
	PRIMARY KEY(`stream`, `entry_id`)
);
--> statement-breakpoint
CREATE INDEX `intake_applied_at` ON `intake_applied` (`applied_at`);