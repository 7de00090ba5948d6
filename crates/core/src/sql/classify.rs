//! Classification of one parsed statement by walking its whole syntax tree.
//!
//! sqlparser's visitor reaches every expression, relation, query and nested statement, so the
//! function denylist and the writable-CTE rule cannot be bypassed by nesting: a call inside a
//! subquery, a CTE, a cast, a default or an `EXPLAIN` target is visited like any other. Each
//! statement met on the way gets its own frame; a frame collects the classes of what is nested
//! in it, and a statement's class is at least the class of anything inside it, except that a
//! plain `EXPLAIN` (which plans but does not execute) is a read.

use std::collections::BTreeSet;
use std::ops::ControlFlow;

use sqlparser::ast::{
    AlterSchemaOperation, AlterTableOperation, BinaryOperator, CopySource, Expr, ObjectName,
    ObjectNamePart, ObjectType, OptimizerHint, Query, Select, SetExpr, ShowCreateObject, Statement,
    TableFactor, TableObject, Visit, Visitor,
};

use super::{DeniedReason, SqlDialect, SqlError, denylist};
use crate::names::OperationClass;

/// SQLite pragmas that only report on the schema.
const READ_PRAGMAS: &[&str] = &[
    "table_info",
    "table_xinfo",
    "table_list",
    "index_list",
    "index_info",
    "index_xinfo",
    "foreign_key_list",
];

pub(super) struct Analysis {
    pub(super) class: OperationClass,
    pub(super) tables: Vec<String>,
}

pub(super) fn analyse(dialect: SqlDialect, statement: &Statement) -> Result<Analysis, SqlError> {
    let mut walker = Walker {
        dialect,
        frames: Vec::new(),
        class: None,
        tables: BTreeSet::new(),
    };
    if let ControlFlow::Break(error) = statement.visit(&mut walker) {
        return Err(error);
    }
    // A walk that classified nothing is a bug; fail closed rather than call it a read.
    let class = walker.class.unwrap_or(OperationClass::Admin);
    Ok(Analysis {
        class,
        tables: walker.tables.into_iter().collect(),
    })
}

struct Walker {
    dialect: SqlDialect,
    /// One entry per statement being visited: the highest class found inside it so far.
    frames: Vec<OperationClass>,
    /// The class of the outermost statement, once its visit is over.
    class: Option<OperationClass>,
    tables: BTreeSet<String>,
}

impl Walker {
    /// Raises the class of the innermost statement being visited, or the result if none is.
    fn raise(&mut self, class: OperationClass) {
        match self.frames.last_mut() {
            Some(frame) => *frame = (*frame).max(class),
            None => self.class = Some(self.class.map_or(class, |c| c.max(class))),
        }
    }

    fn add_table(&mut self, name: &ObjectName) {
        let parts: Vec<String> = name
            .0
            .iter()
            .map(|part| part_name(part).to_lowercase())
            .collect();
        self.tables.insert(parts.join("."));
    }

    fn add_table_str(&mut self, name: &str) {
        self.tables.insert(name.to_lowercase());
    }
}

impl Visitor for Walker {
    type Break = SqlError;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<SqlError> {
        match statement {
            Statement::Call(function) => check_function(&function.name)?,
            Statement::Insert(insert) => {
                if let TableObject::TableFunction(function) = &insert.table {
                    check_function(&function.name)?;
                }
            }
            _ => {}
        }
        self.add_unvisited_tables(statement);
        self.frames.push(OperationClass::Read);
        let hints: &[OptimizerHint] = match statement {
            Statement::Insert(insert) => &insert.optimizer_hints,
            Statement::Update(update) => &update.optimizer_hints,
            Statement::Delete(delete) => &delete.optimizer_hints,
            Statement::Merge(merge) => &merge.optimizer_hints,
            _ => &[],
        };
        if sets_variables(hints) {
            self.raise(OperationClass::Admin);
        }
        ControlFlow::Continue(())
    }

    fn post_visit_statement(&mut self, statement: &Statement) -> ControlFlow<SqlError> {
        let nested = self.frames.pop().unwrap_or(OperationClass::Admin);
        // With this statement's frame popped, this raises the enclosing statement or, for the
        // outermost one, sets the result.
        self.raise(combine(self.dialect, statement, nested));
        ControlFlow::Continue(())
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<SqlError> {
        // `FOR UPDATE` / `FOR SHARE` take row locks: a write, and refused in a read-only
        // transaction anyway.
        if !query.locks.is_empty() {
            self.raise(OperationClass::Write);
        }
        // Clauses of other dialects (`FOR XML`, `SETTINGS`, `FORMAT`, pipe syntax) have no
        // business in these dialects; sqlparser accepting one is a reason to be wary.
        if query.for_clause.is_some()
            || query.settings.is_some()
            || query.format_clause.is_some()
            || !query.pipe_operators.is_empty()
        {
            self.raise(OperationClass::Admin);
        }
        self.add_table_references(&query.body);
        ControlFlow::Continue(())
    }

    fn pre_visit_select(&mut self, select: &Select) -> ControlFlow<SqlError> {
        if select.into.is_some() {
            // PostgreSQL `SELECT … INTO t` creates a table; MySQL `SELECT … INTO @v` sets a
            // session variable (and `INTO OUTFILE` writes a file, should it ever parse).
            self.raise(match self.dialect {
                SqlDialect::Postgres => OperationClass::Ddl,
                SqlDialect::Mysql | SqlDialect::Sqlite => OperationClass::Admin,
            });
        }
        if sets_variables(&select.optimizer_hints) {
            self.raise(OperationClass::Admin);
        }
        ControlFlow::Continue(())
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<SqlError> {
        for part in &relation.0 {
            if let ObjectNamePart::Function(function) = part {
                check_name(&function.name.value)?;
            }
        }
        self.add_table(relation);
        ControlFlow::Continue(())
    }

    fn pre_visit_table_factor(&mut self, factor: &TableFactor) -> ControlFlow<SqlError> {
        match factor {
            // `FROM pg_ls_dir('.')` is a table function call, not a table.
            TableFactor::Table {
                name,
                args: Some(_),
                ..
            }
            | TableFactor::Function { name, .. } => check_function(name),
            _ => ControlFlow::Continue(()),
        }
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<SqlError> {
        // Method-style calls (`(x).f()`) are `Expr::Function`s inside a field access chain.
        match expr {
            Expr::Function(function) => {
                check_function(&function.name)?;
                check_session_function(function)
            }
            Expr::BinaryOp {
                op: BinaryOperator::Assignment,
                ..
            } => ControlFlow::Break(SqlError::Denied {
                reason: DeniedReason::SessionState,
            }),
            _ => ControlFlow::Continue(()),
        }
    }
}

impl Walker {
    /// Adds the tables of statements whose names sqlparser does not visit as relations.
    fn add_unvisited_tables(&mut self, statement: &Statement) {
        match statement {
            Statement::Drop {
                object_type: ObjectType::Table | ObjectType::View | ObjectType::MaterializedView,
                names,
                ..
            } => names.iter().for_each(|name| self.add_table(name)),
            Statement::RenameTable(renames) => {
                for rename in renames {
                    self.add_table(&rename.old_name);
                    self.add_table(&rename.new_name);
                }
            }
            Statement::Copy {
                source: CopySource::Table { table_name, .. },
                ..
            } => {
                self.add_table(table_name);
            }
            Statement::LoadData { table_name, .. } => self.add_table(table_name),
            Statement::LockTables { tables } => {
                tables
                    .iter()
                    .for_each(|table| self.add_table_str(&table.table.value));
            }
            Statement::ShowCreate {
                obj_type: ShowCreateObject::Table | ShowCreateObject::View,
                obj_name,
            } => {
                self.add_table(obj_name);
            }
            Statement::Pragma {
                name,
                value: Some(value),
                ..
            } if is_read_pragma(name) => {
                if let Some(table) = value.value.clone().into_string() {
                    self.add_table_str(&table);
                }
            }
            _ => {}
        }
    }

    /// Adds `TABLE name` operands of a query body (their names are plain strings in the tree).
    fn add_table_references(&mut self, body: &SetExpr) {
        match body {
            SetExpr::Table(table) => {
                if let Some(name) = &table.table_name {
                    let qualified = match &table.schema_name {
                        Some(schema) => format!("{schema}.{name}"),
                        None => name.clone(),
                    };
                    self.add_table_str(&qualified);
                }
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.add_table_references(left);
                self.add_table_references(right);
            }
            _ => {}
        }
    }
}

/// The class of a statement given the highest class nested in it.
fn combine(dialect: SqlDialect, statement: &Statement, nested: OperationClass) -> OperationClass {
    match statement {
        Statement::Explain {
            analyze, options, ..
        } => {
            let executes = *analyze
                || options
                    .iter()
                    .flatten()
                    .any(|option| option.name.value.eq_ignore_ascii_case("analyze"));
            if executes {
                // `EXPLAIN ANALYZE` runs the statement.
                nested
            } else if nested == OperationClass::Admin {
                OperationClass::Admin
            } else {
                OperationClass::Read
            }
        }
        _ => shallow_class(dialect, statement).max(nested),
    }
}

/// The class of a statement by its own kind, ignoring what is nested in it.
fn shallow_class(dialect: SqlDialect, statement: &Statement) -> OperationClass {
    use OperationClass::{Admin, Ddl, Read, Write};
    match statement {
        Statement::Query(_)
        | Statement::ExplainTable { .. }
        | Statement::ShowFunctions { .. }
        | Statement::ShowVariable { .. }
        | Statement::ShowStatus { .. }
        | Statement::ShowVariables { .. }
        | Statement::ShowCreate { .. }
        | Statement::ShowColumns { .. }
        | Statement::ShowCatalogs { .. }
        | Statement::ShowDatabases { .. }
        | Statement::ShowProcessList { .. }
        | Statement::ShowSchemas { .. }
        | Statement::ShowCharset(_)
        | Statement::ShowObjects(_)
        | Statement::ShowTables { .. }
        | Statement::ShowViews { .. }
        | Statement::ShowCollation { .. } => Read,

        Statement::Pragma { name, .. } if dialect == SqlDialect::Sqlite && is_read_pragma(name) => {
            Read
        }

        Statement::Insert(_)
        | Statement::Update(_)
        | Statement::Delete(_)
        | Statement::Merge(_) => Write,

        Statement::AlterTable(alter) if alter.operations.iter().any(is_privileged_alter) => Admin,
        Statement::AlterSchema(alter)
            if alter
                .operations
                .iter()
                .any(|op| matches!(op, AlterSchemaOperation::OwnerTo { .. })) =>
        {
            Admin
        }

        Statement::CreateView(_)
        | Statement::CreateTable(_)
        | Statement::CreateVirtualTable { .. }
        | Statement::CreateIndex(_)
        | Statement::CreateSchema { .. }
        | Statement::CreateSequence { .. }
        | Statement::CreateType { .. }
        | Statement::CreateDomain(_)
        | Statement::AlterTable(_)
        | Statement::AlterSchema(_)
        | Statement::AlterIndex { .. }
        | Statement::AlterView { .. }
        | Statement::AlterType(_)
        | Statement::DropDomain(_)
        | Statement::Truncate(_)
        | Statement::RenameTable(_)
        | Statement::Comment { .. } => Ddl,

        Statement::Drop { object_type, .. } => match object_type {
            ObjectType::Table
            | ObjectType::View
            | ObjectType::MaterializedView
            | ObjectType::Index
            | ObjectType::Schema
            | ObjectType::Sequence
            | ObjectType::Type
            | ObjectType::Collation => Ddl,
            ObjectType::Database
            | ObjectType::Role
            | ObjectType::User
            | ObjectType::Stage
            | ObjectType::Stream
            | ObjectType::Warehouse => Admin,
        },

        // Everything else: roles and grants, session and transaction control, COPY and file
        // loading, procedures, functions and triggers, maintenance, locks, notifications, and
        // every statement kind not recognised above.
        _ => Admin,
    }
}

/// MySQL `/*+ SET_VAR(…) */` sets a session variable for the statement.
fn sets_variables(hints: &[OptimizerHint]) -> bool {
    hints
        .iter()
        .any(|hint| hint.text.to_ascii_lowercase().contains("set_var"))
}

/// `ALTER TABLE` operations that change ownership or switch off row security, triggers or
/// rules: privilege management rather than schema changes.
fn is_privileged_alter(operation: &AlterTableOperation) -> bool {
    matches!(
        operation,
        AlterTableOperation::OwnerTo { .. }
            | AlterTableOperation::EnableRowLevelSecurity
            | AlterTableOperation::DisableRowLevelSecurity
            | AlterTableOperation::ForceRowLevelSecurity
            | AlterTableOperation::NoForceRowLevelSecurity
            | AlterTableOperation::EnableTrigger { .. }
            | AlterTableOperation::DisableTrigger { .. }
            | AlterTableOperation::EnableAlwaysTrigger { .. }
            | AlterTableOperation::EnableReplicaTrigger { .. }
            | AlterTableOperation::EnableRule { .. }
            | AlterTableOperation::DisableRule { .. }
            | AlterTableOperation::EnableAlwaysRule { .. }
            | AlterTableOperation::EnableReplicaRule { .. }
            | AlterTableOperation::ReplicaIdentity { .. }
    )
}

fn is_read_pragma(name: &ObjectName) -> bool {
    name.0.last().is_some_and(|part| {
        let name = part_name(part).to_lowercase();
        READ_PRAGMAS.contains(&name.as_str())
    })
}

fn part_name(part: &ObjectNamePart) -> &str {
    match part {
        ObjectNamePart::Identifier(ident) => &ident.value,
        ObjectNamePart::Function(function) => &function.name.value,
    }
}

/// Checks the function a name calls: its last part, as the server would resolve it with any
/// schema. A quoted last part containing a dot is split too, which only ever denies more.
fn check_function(name: &ObjectName) -> ControlFlow<SqlError> {
    match name.0.last() {
        Some(part) => check_name(part_name(part)),
        None => ControlFlow::Continue(()),
    }
}

/// `LAST_INSERT_ID(expr)` sets the value later calls on the same connection return.
fn check_session_function(function: &sqlparser::ast::Function) -> ControlFlow<SqlError> {
    let is_last_insert_id = function
        .name
        .0
        .last()
        .is_some_and(|part| part_name(part).eq_ignore_ascii_case("last_insert_id"));
    let has_args = match &function.args {
        sqlparser::ast::FunctionArguments::List(list) => !list.args.is_empty(),
        sqlparser::ast::FunctionArguments::Subquery(_) => true,
        sqlparser::ast::FunctionArguments::None => false,
    };
    if is_last_insert_id && has_args {
        return ControlFlow::Break(SqlError::Denied {
            reason: DeniedReason::SessionState,
        });
    }
    ControlFlow::Continue(())
}

fn check_name(name: &str) -> ControlFlow<SqlError> {
    let name = name.to_lowercase();
    let last = name.rsplit('.').next().unwrap_or(&name);
    if denylist::is_denied(last) {
        return ControlFlow::Break(SqlError::DeniedFunction {
            name: last.to_owned(),
        });
    }
    ControlFlow::Continue(())
}
