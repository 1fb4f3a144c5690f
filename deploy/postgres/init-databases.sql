-- One database per ownchat service, owned by the ownchat role that the postgres
-- image creates (POSTGRES_USER). Run once, when the database volume is new.
CREATE DATABASE ownchat_data;
CREATE DATABASE ownchat_trainer;
CREATE DATABASE ownchat_evaluator;
CREATE DATABASE ownchat_serving;
CREATE DATABASE ownchat_gateway;
