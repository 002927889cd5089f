CREATE TABLE "documents" (
	"collection" text NOT NULL,
	"id" text COLLATE "C" NOT NULL,
	"v" bigint NOT NULL,
	"type" text,
	"data" text,
	"deleted" boolean DEFAULT false NOT NULL,
	"updated_at" bigint NOT NULL,
	"last_offset" bigint,
	CONSTRAINT "documents_collection_id_pk" PRIMARY KEY("collection","id")
);
--> statement-breakpoint
CREATE TABLE "meta" (
	"key" text PRIMARY KEY NOT NULL,
	"value" text NOT NULL
);
--> statement-breakpoint
CREATE TABLE "sessions" (
	"connection_id" text PRIMARY KEY NOT NULL,
	"user_id" text NOT NULL,
	"session_id" text NOT NULL,
	"client" text,
	"user_agent" text,
	"remote_address" text,
	"node_id" text NOT NULL,
	"connected_at" bigint NOT NULL,
	"last_seen" bigint NOT NULL,
	"ended_at" bigint,
	"end_reason" text
);
--> statement-breakpoint
CREATE TABLE "stream_entries" (
	"collection" text NOT NULL,
	"offset" bigint NOT NULL,
	"document" text,
	"v" bigint,
	"kind" text NOT NULL,
	"payload" text NOT NULL,
	"source" text NOT NULL,
	"src" text,
	"seq" bigint,
	"created_at" bigint NOT NULL,
	"prev_offset" bigint,
	CONSTRAINT "stream_entries_collection_offset_pk" PRIMARY KEY("collection","offset")
);
--> statement-breakpoint
CREATE TABLE "streams" (
	"collection" text PRIMARY KEY NOT NULL,
	"head" bigint NOT NULL
);
--> statement-breakpoint
CREATE INDEX "sessions_user" ON "sessions" USING btree ("user_id","connected_at");--> statement-breakpoint
CREATE INDEX "sessions_ended" ON "sessions" USING btree ("ended_at");--> statement-breakpoint
CREATE INDEX "sessions_node_open" ON "sessions" USING btree ("node_id") WHERE "sessions"."ended_at" IS NULL;