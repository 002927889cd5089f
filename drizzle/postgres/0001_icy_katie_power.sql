CREATE TABLE "intake_applied" (
	"stream" text NOT NULL,
	"entry_id" text NOT NULL,
	"applied_at" bigint NOT NULL,
	CONSTRAINT "intake_applied_stream_entry_id_pk" PRIMARY KEY("stream","entry_id")
);
--> statement-breakpoint
CREATE INDEX "intake_applied_at" ON "intake_applied" USING btree ("applied_at");